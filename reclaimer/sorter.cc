// sorter.cc — see sorter.h.
//
// Why group: a page's blocks go home as one chain with one atomic operation
// instead of one per block, and the owner wakes once per page. Grouping needs
// no order between pages nor within one, so instead of sorting the pointers
// (std::sort cost about 160 instructions a pointer, most of the freeing
// work; perf/RESULTS.md) the batch is dealt out to a small table of open
// runs keyed by page, and each block is linked onto its page's run as it
// comes. Each block is claimed with one CAS on its mark (double frees), then
// linked.
#include "reclaimer/sorter.h"

#include <atomic>
#include <cstdint>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "allocator/page_return.h"
#include "allocator/segment.h"
#include "common/diag.h"
#include "common/stats.h"

namespace ferry {

namespace {

// Open runs at once: a batch touches few pages (its blocks were freed
// together); a batch that touches more flushes the table and goes on, at
// the price of a second chain for a page now and then.
constexpr size_t kOpenRuns = 64;  // a power of two

// Blocks ahead whose line a claim asks for early. The claim is a locked
// CAS, which waits for its line and lets no later load pass it, so without
// this each block's line came in one at a time.
constexpr size_t kClaimAhead = 8;

// Whether the CPU has PREFETCHW (CPUID 0x80000001, ECX bit 8): 1 yes, 0 no,
// -1 not asked yet. GCC turns __builtin_prefetch(p, 1) into PREFETCHW only
// when built for such a CPU (-mprfchw), and otherwise into a read prefetch,
// which brings a line shared: the claim's CAS then waits a second time, for
// the other copies to go. Found on the 16-core machine, where a reclaimer
// claims blocks whose lines sit in the freeing and the owning threads'
// caches (perf/RESULTS.md, 2026-12-04 afternoon). Asked at run time: the
// same instruction on a CPU without it is not defined to be a no-op.
std::atomic<int> g_has_prefetchw{-1};

FERRY_NOINLINE bool AskForPrefetchw() {
  bool has = false;
#if defined(__x86_64__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0x80000001u, &eax, &ebx, &ecx, &edx)) has = (ecx & (1u << 8)) != 0;
#endif
  g_has_prefetchw.store(has ? 1 : 0, std::memory_order_relaxed);
  return has;
}

// Asks for `p`'s line with the right to write it, where the CPU can.
inline void PrefetchForClaim(const void* p, bool prefetchw) {
#if defined(__x86_64__)
  if (prefetchw) {
    asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
    return;
  }
#endif
  (void)prefetchw;
  __builtin_prefetch(p, 1);
}

struct Run {
  Page* page;
  Block* head;
  Block* tail;
  uint32_t count;
};

[[noreturn]] FERRY_COLD void ReportDoubleFree(Block* block, const char* what) {
  FatalBadPointer("free", block, what);
}

}  // namespace

void ReturnBatch(void** ptrs, size_t n) {
  Run runs[kOpenRuns];
  for (Run& run : runs) run.page = nullptr;
  size_t open = 0;
  size_t chains = 0;
  const int known = g_has_prefetchw.load(std::memory_order_relaxed);
  const bool prefetchw = known < 0 ? AskForPrefetchw() : known != 0;
  for (size_t i = 0; i < n; ++i) {
    if (i + kClaimAhead < n) PrefetchForClaim(ptrs[i + kClaimAhead], prefetchw);
    const uintptr_t address = reinterpret_cast<uintptr_t>(ptrs[i]);
    Page* page = PageOf(SegmentOf(address), address);
    Block* block = reinterpret_cast<Block*>(address);
    // Page records are 1 << kPageRecordShift bytes apart: their address,
    // shifted, is the key.
    size_t slot = (reinterpret_cast<uintptr_t>(page) >> kPageRecordShift) & (kOpenRuns - 1);
    for (size_t probe = 0; runs[slot].page != nullptr && runs[slot].page != page; ++probe) {
      if (probe == kOpenRuns) {  // full: hand every open run home, start over
        for (Run& run : runs) {
          if (run.page != nullptr) ReturnChain(run.page, run.head, run.tail, run.count);
          run.page = nullptr;
        }
        chains += open;
        open = 0;
        break;
      }
      slot = (slot + 1) & (kOpenRuns - 1);
    }
    // Each pointer was checked to be a block start of a live page when it was
    // freed, and the free marked the block (RemoteFreeMark). Claiming the
    // block swaps the mark for its link with one CAS, so of two claims of
    // one block (the same pointer twice in a batch, or in two batches sorted
    // at once after two threads freed it at the same moment) exactly one
    // succeeds; a block without the mark was freed twice or written after
    // its free. Without this a duplicate would count as a block back and
    // could free a page that still has a block out.
    //
    // The block goes in front of its run, so a chain lists its blocks last
    // freed first; with chains pushed in front of the page's returned list
    // the owner gets them in the reverse of the order they were freed in
    // (and puts kOrderChainMin or more in address order as it takes them, OrderChain in
    // heap.cc).
    Run& run = runs[slot];
    const bool opens = run.page == nullptr;
    uintptr_t expected = RemoteFreeMark(page);
    if (!__atomic_compare_exchange_n(&block->next_encoded, &expected,
                                     EncodeNext(opens ? nullptr : run.head), false,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      ReportDoubleFree(block, "double free (or a write after free) of a remotely freed block");
    }
    if (opens) {
      run = Run{page, block, block, 1};
      ++open;
      continue;
    }
    run.head = block;
    ++run.count;
  }
  if (open != 0) {
    for (const Run& run : runs) {
      if (run.page != nullptr) ReturnChain(run.page, run.head, run.tail, run.count);
    }
    chains += open;
  }
  // Once a batch, not once a chain: the counters are process-wide, and every
  // freeing thread and reclaimer bumping them per chain kept their cache
  // line moving between cores.
  CounterAdd(Counter::chains_pushed, static_cast<int64_t>(chains));
  CounterAdd(Counter::blocks_returned, static_cast<int64_t>(n));
}

}  // namespace ferry
