// sorter.h — returns a batch of remote frees to the pages that own them.
//
// The same code runs inline on a freeing thread (FERRY_RECLAIMERS=0, a full
// queue, after fork, at exit) and on the reclaimer pool.
#ifndef FERRY_RECLAIMER_SORTER_H_
#define FERRY_RECLAIMER_SORTER_H_

#include <cstddef>

namespace ferry {

// Groups ptrs[0..n) by page (the array is read, not reordered), links each
// page's blocks into a chain through the blocks and pushes it onto that
// page's returned list with one CAS (a batch touching more than 64 pages at
// once may give a page two chains). Every block must carry its page's
// RemoteFreeMark (the remote free wrote it); a pointer given twice, or a
// block without the mark, is a double free (or a write after free):
// reported with ferry's one-line diagnostic, then abort.
void ReturnBatch(void** ptrs, size_t n);

}  // namespace ferry

#endif  // FERRY_RECLAIMER_SORTER_H_
