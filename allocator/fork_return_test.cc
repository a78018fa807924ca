// fork_return_test.cc — fork() waits for returns half done on other
// application threads. A batch sorted inline marks a full page posted, then
// pushes it onto its owner's inbox; a fork between the two left the child a
// page marked posted that was on no inbox, which neither its owner nor the
// housekeeping would ever free (heap.cc, HoldInlineReturnsForFork). The test
// holds such a return between its two steps (a hook in ReturnChain) and
// forks meanwhile: the child must find the page on the inbox.
//
// Runs with FERRY_RECLAIMERS=0 (every batch sorted inline) and
// FERRY_BATCH=4.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "allocator/heap.h"
#include "allocator/page_return.h"
#include "allocator/segment.h"
#include "ferry.h"

namespace ferry {
namespace {

constexpr size_t kSize = 1000;  // a 1 KiB class: 64 blocks on a one-slice page
constexpr int kBatch = 4;       // FERRY_BATCH in BUILD

std::atomic<int> g_hook_state{0};  // 1: a return is held in the hook; 2: it went on

void HoldTheReturn() {
  g_return_chain_post_hook_for_test.store(nullptr);  // this return only
  g_hook_state = 1;
  usleep(300'000);  // the fork starts meanwhile
  g_hook_state = 2;
}

Page* PageOfBlock(void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  return PageOf(SegmentOf(address), address);
}

bool OnInbox(Heap* heap, Page* page) {
  for (Page* p = heap->inbox[page->size_class].load(); p != nullptr; p = p->inbox_next) {
    if (p == page) return true;
  }
  return false;
}

// The child's verdict, as its exit status: 0 the page is on the inbox (or
// not posted at all), 1 posted and on no inbox, 2 the return still looked
// unfinished.
int ChildVerdict(Page* page) {
  const uintptr_t word = page->returned.load();
  if ((word & kReturnedPosted) == 0) return 0;
  return OnInbox(tl_heap, page) ? 0 : 1;
}

TEST(ForkReturns, AForkWaitsForAReturnHalfDoneOnAnotherThread) {
  // The first page is full once the owner has taken a block of the next.
  std::vector<void*> blocks;
  Page* first = nullptr;
  for (int i = 0; i < 1000; ++i) {
    void* p = ferry_malloc(kSize);
    ASSERT_NE(p, nullptr);
    if (first == nullptr) first = PageOfBlock(p);
    if (PageOfBlock(p) != first) break;
    blocks.push_back(p);
  }
  ASSERT_GT(blocks.size(), static_cast<size_t>(kBatch));
  ASSERT_NE(first->returned.load() & kReturnedFull, 0u) << "the first page was not marked full";

  g_hook_state = 0;
  g_return_chain_post_hook_for_test.store(HoldTheReturn);
  std::thread freer([&] {
    for (int i = 0; i < kBatch; ++i) ferry_free(blocks[i]);  // the fourth sorts the batch inline
  });
  while (g_hook_state.load() == 0) usleep(1000);

  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(ChildVerdict(first));
  EXPECT_EQ(g_hook_state.load(), 2) << "fork() did not wait for the return held on the other thread";
  freer.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "in the child, the page was marked posted and on no inbox";
  EXPECT_TRUE(OnInbox(tl_heap, first));
  for (size_t i = kBatch; i < blocks.size(); ++i) ferry_free(blocks[i]);
}

}  // namespace
}  // namespace ferry
