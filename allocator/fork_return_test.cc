// fork_return_test.cc — fork() waits for returns half done on other
// application threads. A batch sorted inline marks a full page posted, then
// pushes it onto its owner's inbox; a fork between the two left the child a
// page marked posted that was on no inbox, which neither its owner nor the
// housekeeping would ever free (heap.cc, HoldInlineReturnsForFork). The test
// holds such a return between its two steps (a hook in ReturnChain) and
// forks meanwhile: the child must find the page on the inbox. And the wait
// must not stop the forking thread's own returns, nor a return nested in
// another on one thread (both hung the fork in a first version).
//
// Runs with FERRY_RECLAIMERS=0 (every batch sorted inline) and
// FERRY_BATCH=4.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "allocator/heap.h"
#include "allocator/page_return.h"
#include "allocator/segment.h"
#include "ferry.h"
#include "reclaimer/pool.h"
#include "tests/pool_test_util.h"

namespace ferry {
namespace {

constexpr size_t kSize = 1000;  // a 1 KiB class: 64 blocks on a one-slice page
constexpr int kBatch = 4;       // FERRY_BATCH in BUILD

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

// Polls `condition` every millisecond for up to 10 s.
template <typename Condition>
bool WaitFor(Condition condition) {
  return ferry_test::WaitFor(condition, std::chrono::seconds(10), std::chrono::milliseconds(1));
}

// Runs `body` in a child process and returns its exit status, or -1 when it
// has not exited within 20 s (a hang: killed).
template <typename Body>
int ExitStatusOf(Body body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  const auto exited = [&] { return waitpid(pid, &status, WNOHANG) == pid; };
  if (!WaitFor(exited) && !WaitFor(exited)) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The calling thread's blocks of one page, which is full once the owner has
// taken a block of the next (returned in *next, freed by the caller).
std::vector<void*> BlocksOfAFullPage(Page** page, void** next) {
  std::vector<void*> blocks;
  *page = nullptr;
  for (int i = 0; i < 1000; ++i) {
    void* p = ferry_malloc(kSize);
    if (*page == nullptr) *page = PageOfBlock(p);
    if (PageOfBlock(p) != *page) {
      *next = p;
      break;
    }
    blocks.push_back(p);
  }
  return blocks;
}

std::atomic<int> g_hook_state{0};  // 1: a return is held in the hook; 2: it went on
std::atomic<bool> g_hook_saw_the_fork_wait{false};

// Inside a return: holds it until a fork holds the other threads' returns
// (at most 10 s), so that the fork is known to have begun meanwhile.
void HoldTheReturn() {
  g_return_chain_post_hook_for_test.store(nullptr);  // this return only
  g_hook_state = 1;
  g_hook_saw_the_fork_wait = WaitFor(InlineReturnsHeldForTest);
  g_hook_state = 2;
}

// The child's verdict, as its exit status: 0 the page is on the inbox (or
// not posted at all), 1 posted and on no inbox.
int ChildVerdict(Page* page) {
  const uintptr_t word = page->returned.load();
  if ((word & kReturnedPosted) == 0) return 0;
  return OnInbox(tl_heap, page) ? 0 : 1;
}

TEST(ForkReturns, AForkWaitsForAReturnHalfDoneOnAnotherThread) {
  Page* first = nullptr;
  void* next = nullptr;
  std::vector<void*> blocks = BlocksOfAFullPage(&first, &next);
  ASSERT_GT(blocks.size(), static_cast<size_t>(kBatch));
  ASSERT_NE(first->returned.load() & kReturnedFull, 0u) << "the first page was not marked full";

  g_hook_state = 0;
  g_hook_saw_the_fork_wait = false;
  g_return_chain_post_hook_for_test.store(HoldTheReturn);
  std::thread freer([&] {
    for (int i = 0; i < kBatch; ++i) ferry_free(blocks[i]);  // the fourth sorts the batch inline
  });
  if (!WaitFor([] { return g_hook_state.load() != 0; })) {
    g_return_chain_post_hook_for_test.store(nullptr);
    freer.join();
    FAIL() << "the return never reached the hook (was the page posted?)";
  }

  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(ChildVerdict(first));
  EXPECT_EQ(g_hook_state.load(), 2) << "fork() did not wait for the return held on the other thread";
  EXPECT_TRUE(g_hook_saw_the_fork_wait.load()) << "the fork never held the other threads' returns";
  freer.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "in the child, the page was marked posted and on no inbox";
  EXPECT_TRUE(OnInbox(tl_heap, first));
  for (size_t i = kBatch; i < blocks.size(); ++i) ferry_free(blocks[i]);
  ferry_free(next);
}

// A pthread_atfork prepare handler registered before ferry's runs after
// ferry's, on the forking thread, while the other threads' returns are
// held: its own must go on. ferry registers its handlers at load (a
// constructor, which runs before the test's own initialisers, whether
// Bazel links ferry into the test or as a shared object), so this one is
// registered from .preinit_array, which runs before every constructor: as
// a library initialised before a preloaded ferry would. (This guards the
// test's premise, checked below; it is no test of the registration at
// load, which preload_atfork_alloc covers.)
std::vector<void*> g_freed_while_preparing;
std::atomic<bool> g_prepared_inside_ferrys{false};
void PrepareHandlerThatFrees() {
  if (g_freed_while_preparing.empty()) return;  // another test's fork
  g_prepared_inside_ferrys = InlineReturnsHeldForTest();  // ferry's prepare ran first
  for (void* p : g_freed_while_preparing) ferry_free(p);  // a batch of another heap's blocks
  g_freed_while_preparing.clear();
}
int g_registered = -1;
void RegisterBeforeFerry() { g_registered = pthread_atfork(PrepareHandlerThatFrees, nullptr, nullptr); }
[[gnu::section(".preinit_array"), gnu::used]] void (*const g_register_before_ferry)() = RegisterBeforeFerry;

TEST(ForkReturns, APrepareHandlerRunAfterFerrysMayReturnBlocks) {
  ASSERT_EQ(g_registered, 0) << "the handler was not registered from .preinit_array";
  const int status = ExitStatusOf([] {
    ferry_free(ferry_malloc(1));  // this thread's heap (and ferry's handlers), before the fork
    std::thread([] {
      for (int i = 0; i < kBatch; ++i) g_freed_while_preparing.push_back(ferry_malloc(kSize));
    }).join();
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    int child = 0;
    if (waitpid(pid, &child, 0) != pid || !WIFEXITED(child) || WEXITSTATUS(child) != 0) return 1;
    return g_prepared_inside_ferrys ? 0 : 3;
  });
  EXPECT_EQ(status, 0) << (status == -1  ? "the fork hung"
                           : status == 3 ? "the handler ran before ferry's prepare, proving nothing"
                                         : "the fork or its child failed");
}

// A return nested in another on one thread (as an abort or signal handler
// that frees would make) goes on while a fork waits for the outer one.
std::vector<void*> g_freed_inside_a_return;  // a batch of remote frees for the freer
std::atomic<int> g_nested_state{0};           // 1: the outer return is held; 2: the nested one ended

void ReturnInsideAReturn() {
  g_return_chain_post_hook_for_test.store(nullptr);
  g_nested_state = 1;
  if (!WaitFor(InlineReturnsHeldForTest)) return;  // the fork holds returns now (state stays 1)
  for (void* p : g_freed_inside_a_return) ferry_free(p);
  g_freed_inside_a_return.clear();
  g_nested_state = 2;
}

TEST(ForkReturns, AReturnNestedInAnotherGoesOnWhileAForkWaits) {
  const int status = ExitStatusOf([] {
    Page* first = nullptr;
    void* next = nullptr;
    std::vector<void*> blocks = BlocksOfAFullPage(&first, &next);
    if (blocks.size() <= static_cast<size_t>(kBatch) || (first->returned.load() & kReturnedFull) == 0) return 3;
    // This thread's too, so that the freer's frees of them are remote (a
    // heap of an exited thread would be the freer's own: it takes it over).
    for (int i = 0; i < kBatch; ++i) g_freed_inside_a_return.push_back(ferry_malloc(kSize));
    g_return_chain_post_hook_for_test.store(ReturnInsideAReturn);
    std::thread freer([&] {
      for (int i = 0; i < kBatch; ++i) ferry_free(blocks[i]);
    });
    if (!WaitFor([] { return g_nested_state.load() != 0; })) return 4;
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    freer.join();
    int child = 0;
    const bool child_ok = waitpid(pid, &child, 0) == pid && WIFEXITED(child) && WEXITSTATUS(child) == 0;
    return child_ok && g_nested_state.load() == 2 ? 0 : 1;
  });
  EXPECT_EQ(status, 0) << (status == -1 ? "the fork hung" : "the scenario failed");
}

// A new thread that finds no abandoned heap looks for heaps of gone
// threads in the duty turn (heap.cc, InitThreadHeap); a signal handler
// there that forked waited in ferry's prepare handler for the turn its own
// thread held, for good (a review's program, a signal injected by strace).
// The hook raises the signal inside the look: it must wait until the turn
// is given back.
std::atomic<int> g_forks_in_handler{0};

void ForkInHandler(int) {
  const pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  g_forks_in_handler.fetch_add(1);
}

TEST(GoneOwners, ASignalHandlerThatForksDuringANewThreadsLookGoesOn) {
  const int status = ExitStatusOf([] {
    signal(SIGUSR1, ForkInHandler);
    g_gone_owners_look_hook_for_test.store([] {
      g_gone_owners_look_hook_for_test.store(nullptr);  // one look only
      raise(SIGUSR1);
    });
    // Threads that stay until the end take what abandoned heaps there are,
    // until one finds none and looks.
    std::atomic<bool> stop{false};
    std::atomic<int> started{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 256 && g_forks_in_handler.load() == 0; ++i) {
      threads.emplace_back([&] {
        ferry_free(ferry_malloc(64));  // the handler, if any, has run
        started.fetch_add(1);
        while (!stop.load()) usleep(1000);
      });
      if (!WaitFor([&] { return started.load() == i + 1; })) break;  // hung
    }
    stop = true;
    for (std::thread& thread : threads) thread.join();
    return g_forks_in_handler.load() == 1 ? 0 : 3;
  });
  EXPECT_EQ(status, 0) << (status == -1 ? "the fork in the handler hung" : "no look raised the signal");
}

// In a fork child, until every heap names the child's thread (or nobody),
// a collect (a signal handler's malloc_trim) must look at no heap: the
// child's own heap still named the parent's thread, unknown in the child,
// and was abandoned under it (a review's program, a signal injected by
// strace at the renaming's first system call).
std::atomic<int> g_collects_in_renaming{0};

void CountedCollect() {
  g_collects_in_renaming.fetch_add(1);
  ferry_collect();
}

TEST(GoneOwners, ACollectWhileAForkChildNamesItsHeapsAbandonsNone) {
  std::atomic<bool> stop{false};
  std::atomic<bool> ready{false};
  std::thread other([&] {  // a heap of the parent's, alive at the fork
    ferry_free(ferry_malloc(64));
    ready = true;
    while (!stop.load()) usleep(1000);
  });
  ASSERT_TRUE(WaitFor([&] { return ready.load(); }));
  ferry_free(ferry_malloc(64));  // this thread's heap too
  ferry_stats_t before;
  ferry_stats_get(&before);
  g_collects_in_renaming.store(0);
  g_take_ownership_hook_for_test.store(CountedCollect);
  const pid_t pid = fork();
  if (pid == 0) {
    g_take_ownership_hook_for_test.store(nullptr);
    if (g_collects_in_renaming.load() == 0) _exit(2);  // the renaming never ran the collect
    ferry_stats_t after;
    ferry_stats_get(&after);
    _exit(after.heaps_abandoned == before.heaps_abandoned ? 0 : 1);
  }
  g_take_ownership_hook_for_test.store(nullptr);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 2) << "no collect ran while the child named its heaps";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the child's collects during its renaming abandoned heaps";
  stop = true;
  other.join();
}

// A signal held while a new thread tried for the turn (busy: nothing
// looked) is handled as the mask comes off; its handler's malloc made the
// thread's heap, and the thread then made a second one over it, which
// nobody used or gave back (a review's program).
std::atomic<int> g_handler_allocations{0};

void AllocateInHandler(int) {
  ferry_free(ferry_malloc(32));
  g_handler_allocations.fetch_add(1);
}

TEST(GoneOwners, AHandlersHeapMadeAsTheMaskComesOffIsTheThreadsOnlyHeap) {
  struct sigaction action = {};
  action.sa_handler = AllocateInHandler;
  ASSERT_EQ(sigaction(SIGUSR1, &action, nullptr), 0);
  // Another thread holds the duty turn, so a new thread's look finds it busy.
  static std::atomic<bool> holding{false};
  static std::atomic<bool> release{false};
  std::thread holder([] {
    PoolTryRunInDutyTurn(
        [](void*) {
          holding = true;
          while (!release.load()) usleep(1000);
        },
        nullptr);
  });
  ASSERT_TRUE(WaitFor([] { return holding.load(); }));
  g_gone_owners_tried_hook_for_test.store([] {
    g_gone_owners_tried_hook_for_test.store(nullptr);  // one thread only
    raise(SIGUSR1);                                    // held until the mask comes off
  });
  // Threads that stay take what abandoned heaps there are, until one finds
  // none and tries for the turn.
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::atomic<uint64_t> heaps_taken_by_the_signalled{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 256 && g_handler_allocations.load() == 0; ++i) {
    threads.emplace_back([&] {
      ferry_stats_t before;
      ferry_stats_get(&before);
      ferry_free(ferry_malloc(64));
      ferry_stats_t after;
      ferry_stats_get(&after);
      if (g_handler_allocations.load() != 0) {
        heaps_taken_by_the_signalled = (after.heaps_created - before.heaps_created) +
                                       (after.heaps_reused - before.heaps_reused);
      }
      started.fetch_add(1);
      while (!stop.load()) usleep(1000);
    });
    ASSERT_TRUE(WaitFor([&] { return started.load() == i + 1; }));
  }
  release = true;
  holder.join();
  stop = true;
  for (std::thread& thread : threads) thread.join();
  g_gone_owners_tried_hook_for_test.store(nullptr);
  signal(SIGUSR1, SIG_DFL);
  ASSERT_EQ(g_handler_allocations.load(), 1) << "no new thread tried for the turn";
  EXPECT_EQ(heaps_taken_by_the_signalled.load(), 1u) << "the signalled thread made a heap over its handler's";
}

}  // namespace
}  // namespace ferry
