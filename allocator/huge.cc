// huge.cc — blocks above kLargeMax: each on its own OS mapping, laid out as a
// segment (header in slice 0) so that free finds it by the same arithmetic,
// and unmapped as soon as it is freed. Any thread may free a huge block
// directly: it has no owner and no free list.
//
// A block over-aligned to kSegmentSize or more cannot sit in its header's
// chunk; it starts exactly one chunk above the header instead, and the
// segment map marks its chunk kMapHugeAlignedBlock.
#include <errno.h>

#include <cstdint>

#include "allocator/segment.h"
#include "common/diag.h"
#include "common/os.h"
#include "common/stats.h"
#include "common/valgrind.h"

namespace ferry {

void* AllocateHuge(size_t n, size_t alignment) {
  if (n > (size_t{1} << 46) || alignment > (size_t{1} << 40)) {
    errno = ENOMEM;
    return nullptr;
  }
  const size_t os_page = OsPageSize();
  const size_t block_bytes = AlignUp(n == 0 ? 1 : n, os_page);
  Segment* segment;
  Page* page;
  void* mapping;
  size_t mapping_size;
  uintptr_t block;
  if (alignment < kSegmentSize) {
    const size_t offset = alignment > kSliceSize ? alignment : kSliceSize;
    // Whole chunks, so that every address of the chunk the segment map
    // marks is mapped: a bad pointer into its tail is reported, not a crash.
    mapping_size = AlignUp(offset + block_bytes, kSegmentSize);
    mapping = OsReserve(mapping_size, kSegmentSize, /*overcommit_check=*/true);
    if (mapping == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    segment = static_cast<Segment*>(mapping);
    const size_t slice = offset / kSliceSize;
    page = &segment->pages[slice];
    block = reinterpret_cast<uintptr_t>(mapping) + offset;
    // Interior pointers within the first chunk find this page and are
    // rejected by the start check; further chunks are not in the map.
    for (size_t k = slice + 1; k < kSlicesPerSegment; ++k) {
      segment->pages[k].record_back = RecordBack(k - slice);
    }
    page->slice_count = static_cast<uint8_t>(kSlicesPerSegment - slice);
  } else {
    mapping_size = 2 * kSegmentSize + AlignUp(block_bytes, kSegmentSize) + alignment;
    mapping = OsReserve(mapping_size, kSegmentSize, /*overcommit_check=*/true);
    if (mapping == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    block = AlignUp(reinterpret_cast<uintptr_t>(mapping) + kSegmentSize, alignment);
    segment = reinterpret_cast<Segment*>(block - kSegmentSize);
    page = &segment->pages[0];
    page->slice_count = 1;
  }
  VgHideMetadata(segment, sizeof(Segment));
  segment->kind = SegmentKind::kHuge;
  segment->mapping = mapping;
  segment->mapping_size = mapping_size;
  page->kind = PageKind::kHuge;
  page->start = block;
  page->block_size = reinterpret_cast<uintptr_t>(mapping) + mapping_size - block;
  if (alignment < kSegmentSize) {
    SegmentMapSet(reinterpret_cast<uintptr_t>(segment), kMapSegment);
  } else {
    SegmentMapSet(block, kMapHugeAlignedBlock);
  }
  CounterAdd(g_counters.huge_allocs, 1);
  if (Verbose(1)) {
    DiagLine().Str("ferry: huge block ").Hex(block).Str(" of ").Dec(n).Str(" bytes mapped").WriteToStderr();
  }
  CounterAdd(g_counters.huge_bytes_live, static_cast<int64_t>(mapping_size));
  return reinterpret_cast<void*>(block);
}

void FreeHuge(Segment* segment, Page* page, void* p, const char* call) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (address != page->start) FatalBadPointer(call, p, "not the start of a block (interior pointer)");
  if (segment->huge_freed.exchange(true, std::memory_order_acq_rel)) {
    FatalBadPointer(call, p, "double free (huge block already free)");
  }
  const bool over_aligned = page == &segment->pages[0];
  SegmentMapSet(over_aligned ? address : reinterpret_cast<uintptr_t>(segment), kMapNone);
  CounterAdd(g_counters.huge_frees, 1);
  CounterAdd(g_counters.huge_bytes_live, -static_cast<int64_t>(segment->mapping_size));
  OsRelease(segment->mapping, segment->mapping_size);
}

size_t HugeUsableSize(Page* page, uintptr_t address, const char* call) {
  if (address != page->start) {
    FatalBadPointer(call, reinterpret_cast<const void*>(address),
                    "not the start of a block (interior pointer)");
  }
  return page->block_size;
}

}  // namespace ferry
