// arena.cc — segments carved from larger reservations, and the segment map.
//
// An arena is kArenaSize of address space, reserved once and never unmapped;
// segments are handed out lowest address first (keeping the heap compact) and
// come back decommitted, so a released segment costs address space only.
// Arena growth is a rare slow path under one lock; the lock is never held
// across a call that can allocate.
#include <cstring>

#include "allocator/segment.h"
#include "common/diag.h"
#include "common/os.h"
#include "common/spin_lock.h"
#include "common/stats.h"

namespace ferry {

constinit std::atomic<uint8_t> g_segment_map[kMapEntries];
constinit FreeListKeys g_keys{};  // set once, in EnsureGlobalInit

void SegmentMapSet(uintptr_t chunk_address, uint8_t value) {
  const uintptr_t chunk = chunk_address >> kSegmentShift;
  FERRY_CHECK(chunk < kMapEntries);
  g_segment_map[chunk].store(value, std::memory_order_release);
}

namespace {

constexpr size_t kSegmentsPerArena = 16;  // 64 MiB of address space
constexpr size_t kArenaSize = kSegmentsPerArena * kSegmentSize;
constexpr size_t kMaxArenas = 4096;       // 256 GiB of small and large blocks

struct Arena {
  uintptr_t base;
  uint32_t used;  // bit i: segment i is handed out
};

constinit SpinLock g_arena_lock;
constinit Arena g_arenas[kMaxArenas];
constinit size_t g_arena_count = 0;

}  // namespace

Segment* ArenaAllocateSegment() {
  uintptr_t address = 0;
  {
    SpinLockHolder hold(&g_arena_lock);
    for (size_t i = 0; i < g_arena_count && address == 0; ++i) {
      Arena& arena = g_arenas[i];
      if (arena.used == (uint32_t{1} << kSegmentsPerArena) - 1) continue;
      const int slot = __builtin_ctz(~arena.used);
      arena.used |= uint32_t{1} << slot;
      address = arena.base + static_cast<size_t>(slot) * kSegmentSize;
    }
    if (address == 0 && g_arena_count < kMaxArenas) {
      void* base = OsReserve(kArenaSize, kSegmentSize);
      if (base != nullptr) {
        Arena& arena = g_arenas[g_arena_count++];
        arena.base = reinterpret_cast<uintptr_t>(base);
        arena.used = 1;
        address = arena.base;
        CounterAdd(g_counters.arena_bytes_reserved, kArenaSize);
      }
    }
  }
  if (address == 0) return nullptr;
  CounterAdd(g_counters.segments_mapped, 1);
  CounterAdd(g_counters.segments_live, 1);
  Segment* segment = reinterpret_cast<Segment*>(address);
  segment->kind = SegmentKind::kNormal;
  segment->used_slices = 1;  // the header
  SegmentMapSet(address, kMapSegment);
  if (Verbose(1)) DiagLine().Str("ferry: segment ").Hex(address).Str(" mapped").WriteToStderr();
  return segment;
}

void ArenaReleaseSegment(Segment* segment) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(segment);
  SegmentMapSet(address, kMapNone);
  OsDecommit(segment, kSegmentSize);
  CounterAdd(g_counters.bytes_decommitted, kSegmentSize);
  CounterAdd(g_counters.segments_released, 1);
  CounterAdd(g_counters.segments_live, -1);
  if (Verbose(1)) DiagLine().Str("ferry: segment ").Hex(address).Str(" released").WriteToStderr();
  SpinLockHolder hold(&g_arena_lock);
  for (size_t i = 0; i < g_arena_count; ++i) {
    Arena& arena = g_arenas[i];
    if (address >= arena.base && address < arena.base + kArenaSize) {
      arena.used &= ~(uint32_t{1} << ((address - arena.base) / kSegmentSize));
      return;
    }
  }
  FERRY_CHECK(false && "segment outside every arena");
}

void ArenaLockForFork() { g_arena_lock.Lock(); }
void ArenaUnlockAfterFork() { g_arena_lock.Unlock(); }

}  // namespace ferry
