// api_fuzz.cc — libFuzzer target: every input is a program of calls on the
// whole ferry API (API mode: ferry_*, not the malloc override), run on the
// fuzzer's own thread ("main") and on kWorkers worker threads.
//
// Each thread owns a table of blocks. A block is filled, over every usable
// byte, with a pattern derived from its id (ids count up from 1 in each
// input), and checked — pattern, alignment, usable size — before it is
// freed, reallocated or handed to another thread, and whenever an op looks
// at it. A failed check or an unexpected result prints one line naming the
// op and the block, then aborts, which libFuzzer reports as a crash.
//
// Program format. Any byte string is a valid program; reads past the end
// give zeros, and the program ends with its bytes. One op is:
//   op byte   low 4 bits: the Op below; high 4 bits: the thread that runs
//             it, t = (byte >> 4) % (kWorkers + 1), 0 being main
//   arguments as listed at each Op, read by main when it decodes the op.
// Main decodes every op and decides every size and id, so the program each
// thread runs, and each table's contents, depend on the input alone; only
// the interleaving of the threads varies from run to run. An op of a worker
// is queued to it and main goes on; Take and Exit wait for one worker, Sync
// for all. At the end of an input every worker frees its table and exits
// and main frees its own, so nothing is left over for the next input.
//
// Sizes (ReadSize) range from 0 to 9 MiB, with every size class boundary,
// the 2 MiB large/huge boundary and the 4 MiB segment size within reach, and
// impossible sizes that must fail with NULL and ENOMEM. An input may ask
// for at most kByteBudget bytes in all; past that, sizes are cut down.
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <array>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "ferry.h"
#include "tests/fuzz/block_pattern.h"
#include "tests/test_util.h"

namespace {

using ferry_fuzz::AllZeroBytes;
using ferry_fuzz::FillPattern;
using ferry_fuzz::PatternMismatch;
using ferry_test::IsAligned;
using ferry_test::kKiB;
using ferry_test::kMiB;
using ferry_test::Mix;

constexpr int kWorkers = 3;
constexpr size_t kMainSlots = 32;
constexpr size_t kWorkerSlots = 16;
constexpr size_t kByteBudget = 32 * kMiB;
constexpr size_t kMaxRequest = PTRDIFF_MAX;
// Every size from here up is one no allocator can honour (the fuzzer asks
// for nothing between 9 MiB and this).
constexpr size_t kImpossible = size_t{1} << 62;
// ferry honours every power-of-two alignment up to this; above, it may refuse.
constexpr size_t kGuaranteedAlignment = 64 * kMiB;

// Sizes no allocator can honour (as in api_test.cc).
constexpr size_t kImpossibleSizes[] = {
    SIZE_MAX,         SIZE_MAX - 1,      SIZE_MAX - 15,   SIZE_MAX - 4095,
    SIZE_MAX - kMiB,  SIZE_MAX / 2 + 1,  kMaxRequest + 1, kMaxRequest,
    kMaxRequest - 4095, size_t{1} << 62,
};

// Alignments that are no power of two, or too small for posix_memalign, or
// beyond what ferry promises.
constexpr size_t kOddAlignments[] = {
    0, 1, 2, 4, 3, 12, 24, 48, 4095, kMiB + 8, SIZE_MAX, size_t{1} << 27,
    size_t{1} << 40, size_t{1} << 62, size_t{1} << 63, 0x10001,
};

enum Op : uint8_t {
  kMalloc,         // slot, size
  kCalloc,         // slot, count byte, size
  kRealloc,        // slot, size (an empty slot: realloc(NULL, size))
  kFree,           // slot
  kFreeSized,      // slot
  kAlignedAlloc,   // slot, alignment, size
  kPosixMemalign,  // slot, alignment, size
  kCheck,          // slot: usable size, alignment and pattern of the block
  kFlush,
  kCollect,
  kStats,
  kGive,           // slot, worker byte (bit 0: the worker frees it on arrival), slot there
  kSync,           // main waits until every worker is idle
  kTake,           // slot, main slot: main takes a worker's block (t = 0: worker byte first)
  kExit,           // the worker exits, main adopts its table, a fresh thread replaces it
  kBurst,          // count byte, size, worker byte: make count blocks, free them there
  kNumOps,
  // Commands a thread sends another; never decoded from the input.
  kAdopt,          // store `block` in `slot` (freeing what was there)
  kFreeBlock,      // check and free `block`
  kSendToMain,     // move the block in `slot` to main's inbox
  kDrain,          // free every block in the table
  kQuit,           // leave the worker loop
};
static_assert(kNumOps == 16, "the op is the low 4 bits of its byte");

const char* const kOpNames[] = {
    "malloc", "calloc",  "realloc", "free", "free_sized", "aligned_alloc", "posix_memalign",
    "check",  "flush",   "collect", "stats", "give",      "sync",          "take",
    "exit",   "burst",   "?",       "adopt", "free_block", "send_to_main", "drain",
    "quit",
};

struct Block {
  void* p = nullptr;
  size_t n = 0;          // bytes asked for
  size_t usable = 0;     // ferry_usable_size when it was made; all carry the pattern
  size_t alignment = 1;  // what the block must be aligned to
  uint64_t id = 0;
};

uint64_t SeedOf(const Block& b) { return Mix(b.id * 0x9e3779b97f4a7c15ULL + 0x5eed); }

// What a thread is doing now, for the failure message.
thread_local const char* tl_op = "none";
thread_local int tl_thread = 0;

[[noreturn]] void Fail(const char* what, const Block& b, size_t detail) {
  fprintf(stderr,
          "api_fuzz: %s (op %s on thread %d): block id %llu at %p, size %zu, usable %zu, "
          "alignment %zu; detail %zu\n",
          what, tl_op, tl_thread, static_cast<unsigned long long>(b.id), b.p, b.n, b.usable,
          b.alignment, detail);
  abort();
}

[[noreturn]] void Fail(const char* what, size_t a, size_t b) {
  fprintf(stderr, "api_fuzz: %s (op %s on thread %d): %zu, %zu\n", what, tl_op, tl_thread, a, b);
  abort();
}

// The alignment malloc promises for `n` bytes (ferry.h).
// For 0 bytes, which hold no object, 8 (ferry gives malloc(0) an 8-byte slot).
size_t DefaultAlignment(size_t n) { return n != 0 && n % 16 == 0 ? 16 : 8; }

// Checks a live block: where it is, how big ferry says it is, and every
// byte of the pattern.
void Check(const Block& b) {
  if (!IsAligned(b.p, b.alignment)) Fail("misaligned block", b, 0);
  const size_t usable = ferry_usable_size(b.p);
  if (usable != b.usable) Fail("usable size changed", b, usable);
  const size_t bad = PatternMismatch(b.p, 0, b.usable, SeedOf(b));
  if (bad != SIZE_MAX) Fail("block corrupted at offset", b, bad);
}

// Checks a block just returned for `n` bytes, records and fills it.
Block Made(void* p, size_t n, size_t alignment, uint64_t id) {
  Block b{p, n, 0, alignment, id};
  if (p == nullptr) Fail("allocation of a possible size failed", b, static_cast<size_t>(errno));
  if (!IsAligned(p, alignment)) Fail("new block misaligned", b, 0);
  b.usable = ferry_usable_size(p);
  if (b.usable < n) Fail("usable size below the size asked for", b, b.usable);
  FillPattern(p, 0, b.usable, SeedOf(b));
  return b;
}

void Release(Block* b, bool sized) {
  Check(*b);
  if (sized) {
    ferry_free_sized(b->p, b->n);
  } else {
    ferry_free(b->p);
  }
  *b = Block{};
}

// A call that must fail with NULL and errno `expected`.
void ExpectNull(void* p, int expected, size_t a, size_t b) {
  const int error = errno;
  if (p != nullptr) Fail("impossible request succeeded", a, b);
  if (error != expected) Fail("wrong errno for a refused request", a, static_cast<size_t>(error));
}

// What aligned_alloc and posix_memalign must do with (alignment, size).
enum class Outcome { kBlock, kMayRefuse, kEinval, kEnomem, kEinvalOrEnomem };

Outcome Expected(size_t alignment, size_t n, bool posix) {
  const bool bad = alignment == 0 || (alignment & (alignment - 1)) != 0 ||
                   (posix && alignment % sizeof(void*) != 0);
  const bool impossible = n >= kImpossible || alignment > kMaxRequest / 2;
  if (bad) return impossible ? Outcome::kEinvalOrEnomem : Outcome::kEinval;
  if (impossible) return Outcome::kEnomem;
  return alignment > kGuaranteedAlignment ? Outcome::kMayRefuse : Outcome::kBlock;
}

// One op as a thread runs it; every choice is made by main when it decodes.
struct Command {
  uint8_t op = kSync;
  size_t slot = 0;       // in the table of the thread that runs it
  size_t size = 0;
  size_t count = 0;      // calloc's count; burst's number of blocks
  size_t alignment = 0;
  uint64_t id = 0;       // of the (first) block the op makes
  int to = 0;            // worker a block goes to (give, burst)
  bool free_there = false;
  size_t to_slot = 0;
  Block block;           // the block an adopt or free_block carries
};

struct Table {
  explicit Table(size_t slots) : size(slots) {}
  Block& operator[](size_t slot) { return blocks[slot % size]; }
  size_t size;
  std::array<Block, kMainSlots> blocks{};
};

struct Worker {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Command> queue;  // guarded by mu
  Table table{kWorkerSlots};  // the worker's own, and main's once it has joined it
  std::thread thread;
};

class Program {
 public:
  Program(const uint8_t* data, size_t size) : data_(data), end_(data + size) {}
  void Run();

 private:
  uint8_t Byte() { return data_ < end_ ? *data_++ : 0; }
  size_t Short() { return Byte() | size_t{Byte()} << 8; }
  size_t ReadSize();
  size_t ReadAlignment();
  int ReadWorker() { return 1 + Byte() % kWorkers; }
  uint64_t NextId(size_t count) {
    const uint64_t id = next_id_;
    next_id_ += count;
    return id;
  }

  void Decode(uint8_t op, int thread, Command* c);
  void Execute(int thread, Table& table, const Command& c);
  void Send(int worker, const Command& c);
  void WorkerLoop(int w);
  void StartWorkers();
  void StartWorker(int w) {
    workers_[w].thread = std::thread([this, w] { WorkerLoop(w); });
  }
  void ExitWorker(int w);
  void Sync();
  void Finish();

  void Allocate(const Command& c, Table& table);
  void Realloc(const Command& c, Table& table);
  void Burst(int thread, const Command& c);
  void Store(Table& table, size_t slot, const Block& b) {
    Block& old = table[slot];
    if (old.p != nullptr) Release(&old, false);
    old = b;
  }

  const uint8_t* data_;
  const uint8_t* const end_;
  uint64_t next_id_ = 1;
  size_t bytes_asked_ = 0;  // of kByteBudget
  bool workers_started_ = false;
  Table main_table_{kMainSlots};
  std::array<Worker, kWorkers + 1> workers_;  // [1..kWorkers]

  // Commands queued and not yet done, over all workers.
  std::mutex idle_mu_;
  std::condition_variable idle_cv_;
  size_t outstanding_ = 0;  // guarded by idle_mu_

  // Blocks a worker sent to main (Take).
  std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::deque<std::pair<size_t, Block>> inbox_;  // guarded by inbox_mu_
};

size_t Program::ReadSize() {
  const uint8_t k = Byte();
  const size_t low = k & 31;
  size_t n;
  switch (k >> 5) {
    case 0: n = low; break;
    case 1: n = 32 + Short() % 1024; break;
    case 2: n = Short(); break;                           // to 64 KiB
    case 3: n = Short() * 8 + low; break;                 // to the 512 KiB medium limit
    case 4: n = 512 * kKiB + Short() * 24 + low; break;   // large, past 2 MiB
    case 5: n = 2 * kMiB + Short() * 112 + low; break;    // huge, past the 4 MiB segment
    case 6: {                                             // around a power of two
      const int delta = static_cast<int8_t>(Byte()) % 17;
      n = (size_t{1} << (low % 24)) + delta;
      if (static_cast<ptrdiff_t>(n) < 0) n = 0;
      break;
    }
    default:
      if (low < 10) return kImpossibleSizes[low];
      n = 4 * kMiB + (static_cast<int8_t>(Byte()) * 64);  // the segment size +- 8 KiB
      break;
  }
  if (bytes_asked_ + n > kByteBudget) n %= 1024;
  bytes_asked_ += n;
  return n;
}

size_t Program::ReadAlignment() {
  const uint8_t a = Byte();
  if (a < 0xe0) return size_t{1} << (a % 21);   // 1 B to 1 MiB
  if (a < 0xf0) return size_t{1} << (21 + a % 6);  // 2 MiB to 64 MiB
  return kOddAlignments[a & 15];
}

void Program::Decode(uint8_t op, int thread, Command* c) {
  c->op = op;
  switch (op) {
    case kMalloc:
    case kRealloc:
      c->slot = Byte();
      c->size = ReadSize();
      c->id = NextId(1);
      break;
    case kCalloc: {
      c->slot = Byte();
      const uint8_t count = Byte();
      c->size = ReadSize();
      // 0xf0 and up: a count whose product with any size > 2 overflows.
      c->count = count >= 0xf0 ? SIZE_MAX / 2 + (count & 15) : count % 64;
      if (c->count > 1 && c->count < 64 && c->size < kImpossible) {
        // ReadSize charged one element; charge the rest, cut down past the budget.
        if (bytes_asked_ + (c->count - 1) * c->size > kByteBudget) c->size %= 1024;
        bytes_asked_ += (c->count - 1) * c->size;
      }
      c->id = NextId(1);
      break;
    }
    case kFree:
    case kFreeSized:
    case kCheck:
      c->slot = Byte();
      break;
    case kAlignedAlloc:
    case kPosixMemalign:
      c->slot = Byte();
      c->alignment = ReadAlignment();
      c->size = ReadSize();
      c->id = NextId(1);
      break;
    case kGive: {
      c->slot = Byte();
      const uint8_t to = Byte();
      c->free_there = (to & 1) != 0;
      c->to = 1 + (to >> 1) % kWorkers;
      if (c->to == thread) c->to = thread % kWorkers + 1;
      c->to_slot = Byte();
      break;
    }
    case kTake:
      if (thread == 0) c->to = ReadWorker();
      c->slot = Byte();
      c->to_slot = Byte();
      break;
    case kExit:
      if (thread == 0) c->to = ReadWorker();
      break;
    case kBurst:
      c->count = 1 + Byte() % 64;
      c->size = ReadSize() % (2 * kKiB + 1);
      c->to = Byte() % (kWorkers + 1);
      c->id = NextId(c->count);
      break;
    default:
      break;
  }
}

void Program::Allocate(const Command& c, Table& table) {
  errno = 0;
  switch (c.op) {
    case kMalloc: {
      void* p = ferry_malloc(c.size);
      if (c.size >= kImpossible) return ExpectNull(p, ENOMEM, c.size, 0);
      return Store(table, c.slot, Made(p, c.size, DefaultAlignment(c.size), c.id));
    }
    case kCalloc: {
      void* p = ferry_calloc(c.count, c.size);
      size_t total;
      if (__builtin_mul_overflow(c.count, c.size, &total) || total >= kImpossible) {
        return ExpectNull(p, ENOMEM, c.count, c.size);
      }
      if (p != nullptr && !AllZeroBytes(p, total)) Fail("calloc block not zero", total, 0);
      return Store(table, c.slot, Made(p, total, DefaultAlignment(total), c.id));
    }
    case kAlignedAlloc: {
      void* p = ferry_aligned_alloc(c.alignment, c.size);
      const int error = errno;
      switch (Expected(c.alignment, c.size, false)) {
        case Outcome::kEinval: return ExpectNull(p, EINVAL, c.alignment, c.size);
        case Outcome::kEnomem: return ExpectNull(p, ENOMEM, c.alignment, c.size);
        case Outcome::kEinvalOrEnomem: return ExpectNull(p, error == EINVAL ? EINVAL : ENOMEM, c.alignment, c.size);
        case Outcome::kMayRefuse:
          if (p == nullptr) return ExpectNull(p, error == EINVAL ? EINVAL : ENOMEM, c.alignment, c.size);
          break;
        case Outcome::kBlock: break;
      }
      return Store(table, c.slot, Made(p, c.size, c.alignment, c.id));
    }
    default: {  // kPosixMemalign
      void* const sentinel = reinterpret_cast<void*>(uintptr_t{0x5e7});
      void* p = sentinel;
      errno = EDOM;
      const int rc = ferry_posix_memalign(&p, c.alignment, c.size);
      if (errno != EDOM) Fail("posix_memalign changed errno", c.alignment, static_cast<size_t>(errno));
      const Outcome expected = Expected(c.alignment, c.size, true);
      const bool refused = rc != 0;
      if (refused && p != sentinel) Fail("posix_memalign failed but wrote *out", c.alignment, c.size);
      switch (expected) {
        case Outcome::kEinval:
          if (rc != EINVAL) Fail("posix_memalign: want EINVAL", c.alignment, static_cast<size_t>(rc));
          return;
        case Outcome::kEnomem:
          if (rc != ENOMEM) Fail("posix_memalign: want ENOMEM", c.alignment, static_cast<size_t>(rc));
          return;
        case Outcome::kEinvalOrEnomem:
        case Outcome::kMayRefuse:
          if (rc != 0 && rc != EINVAL && rc != ENOMEM) {
            Fail("posix_memalign: bad return", c.alignment, static_cast<size_t>(rc));
          }
          if (refused || expected == Outcome::kEinvalOrEnomem) {
            if (!refused) Fail("posix_memalign: bad request succeeded", c.alignment, c.size);
            return;
          }
          break;
        case Outcome::kBlock:
          if (rc != 0) Fail("posix_memalign of a possible request failed", c.alignment, static_cast<size_t>(rc));
          break;
      }
      return Store(table, c.slot, Made(p, c.size, c.alignment, c.id));
    }
  }
}

void Program::Realloc(const Command& c, Table& table) {
  Block& b = table[c.slot];
  if (b.p != nullptr) Check(b);
  errno = 0;
  void* q = ferry_realloc(b.p, c.size);
  if (c.size >= kImpossible) {
    ExpectNull(q, ENOMEM, c.size, 0);
    if (b.p != nullptr) Check(b);  // still there, untouched
    return;
  }
  if (b.p == nullptr) {
    b = Made(q, c.size, DefaultAlignment(c.size), c.id);
    return;
  }
  // The block keeps its id, so its pattern: the first min(old, new) bytes
  // must have come along; the rest is written afresh.
  if (q == nullptr) Fail("realloc of a possible size failed", b, c.size);
  Block moved{q, c.size, ferry_usable_size(q), DefaultAlignment(c.size), b.id};
  if (!IsAligned(q, moved.alignment)) Fail("realloc'd block misaligned", moved, b.usable);
  const size_t kept = b.n < c.size ? b.n : c.size;
  const size_t bad = PatternMismatch(q, 0, kept, SeedOf(moved));
  if (bad != SIZE_MAX) Fail("realloc lost the block's bytes at offset", moved, bad);
  if (moved.usable < c.size) Fail("realloc: usable size below the size asked for", moved, moved.usable);
  FillPattern(q, kept, moved.usable, SeedOf(moved));
  b = moved;
}

// `count` blocks of one size, made on `thread` and freed by worker c.to, or
// by `thread` itself (newest first) when c.to is it or main.
void Program::Burst(int thread, const Command& c) {
  Block blocks[64];
  for (size_t i = 0; i < c.count; ++i) {
    blocks[i] = Made(ferry_malloc(c.size), c.size, DefaultAlignment(c.size), c.id + i);
  }
  const bool remote = c.to != 0 && c.to != thread;
  for (size_t i = c.count; i-- > 0;) {
    if (remote) {
      Command f;
      f.op = kFreeBlock;
      f.block = blocks[i];
      f.free_there = (i & 1) != 0;
      Send(c.to, f);
    } else {
      Release(&blocks[i], (i & 1) != 0);
    }
  }
}

void Program::Execute(int thread, Table& table, const Command& c) {
  tl_op = kOpNames[c.op];
  switch (c.op) {
    case kMalloc:
    case kCalloc:
    case kAlignedAlloc:
    case kPosixMemalign:
      Allocate(c, table);
      break;
    case kRealloc:
      Realloc(c, table);
      break;
    case kFree:
    case kFreeSized: {
      Block& b = table[c.slot];
      if (b.p == nullptr) {
        // NULL is ignored.
        if (c.op == kFree) ferry_free(nullptr); else ferry_free_sized(nullptr, c.slot);
      } else {
        Release(&b, c.op == kFreeSized);
      }
      break;
    }
    case kCheck: {
      const Block& b = table[c.slot];
      if (b.p != nullptr) {
        Check(b);
      } else if (ferry_usable_size(nullptr) != 0) {
        Fail("usable_size(NULL) is not 0", 0, 0);
      }
      break;
    }
    case kFlush:
      ferry_flush();
      break;
    case kCollect:
      ferry_collect();
      break;
    case kStats: {
      ferry_stats_t stats;
      ferry_stats_get(&stats);
      if (stats.version != FERRY_VERSION) Fail("stats: wrong version", stats.version, FERRY_VERSION);
      if (stats.reclaimer_threads > 64) Fail("stats: more reclaimers than allowed", stats.reclaimer_threads, 64);
      break;
    }
    case kGive: {
      Block& b = table[c.slot];
      if (b.p == nullptr) break;
      Check(b);
      Command give;
      give.op = c.free_there ? kFreeBlock : kAdopt;
      give.block = b;
      give.slot = c.to_slot;
      give.free_there = (c.to_slot & 1) != 0;  // free_block: sized or not
      b = Block{};
      Send(c.to, give);
      break;
    }
    case kBurst:
      Burst(thread, c);
      break;
    case kAdopt:
      Check(c.block);
      Store(table, c.slot, c.block);
      break;
    case kFreeBlock: {
      Block b = c.block;
      Release(&b, c.free_there);
      break;
    }
    case kSendToMain: {
      Block b = table[c.slot];
      if (b.p != nullptr) Check(b);
      table[c.slot] = Block{};
      std::lock_guard<std::mutex> lock(inbox_mu_);
      inbox_.emplace_back(c.to_slot, b);
      inbox_cv_.notify_one();
      break;
    }
    case kDrain:
      for (Block& b : table.blocks) {
        if (b.p != nullptr) Release(&b, (b.id & 1) != 0);
      }
      break;
    default:
      break;
  }
  tl_op = "none";
}

void Program::Send(int worker, const Command& c) {
  {
    std::lock_guard<std::mutex> lock(idle_mu_);
    ++outstanding_;
  }
  Worker& w = workers_[worker];
  std::lock_guard<std::mutex> lock(w.mu);
  w.queue.push_back(c);
  w.cv.notify_one();
}

void Program::WorkerLoop(int w) {
  tl_thread = w;
  Worker& me = workers_[w];
  for (;;) {
    Command c;
    {
      std::unique_lock<std::mutex> lock(me.mu);
      me.cv.wait(lock, [&] { return !me.queue.empty(); });
      c = me.queue.front();
      me.queue.pop_front();
    }
    if (c.op != kQuit) Execute(w, me.table, c);
    {
      std::lock_guard<std::mutex> lock(idle_mu_);
      if (--outstanding_ == 0) idle_cv_.notify_all();
    }
    if (c.op == kQuit) return;
  }
}

void Program::StartWorkers() {
  if (workers_started_) return;
  workers_started_ = true;
  for (int w = 1; w <= kWorkers; ++w) StartWorker(w);
}

void Program::Sync() {
  std::unique_lock<std::mutex> lock(idle_mu_);
  idle_cv_.wait(lock, [&] { return outstanding_ == 0; });
}

// The worker runs what it was sent before, then its thread exits, leaving
// its heap's blocks live in main's table (and in flight to others); a fresh
// thread takes its place and what is sent to it meanwhile.
void Program::ExitWorker(int w) {
  Command quit;
  quit.op = kQuit;
  Send(w, quit);
  workers_[w].thread.join();
  tl_op = "exit";
  Table& left = workers_[w].table;
  for (size_t i = 0; i < left.size; ++i) {
    if (left[i].p == nullptr) continue;
    Check(left[i]);
    Store(main_table_, i * 2 + 1, left[i]);
    left[i] = Block{};
  }
  StartWorker(w);
}

void Program::Finish() {
  if (workers_started_) {
    Sync();  // nothing more travels between workers
    Command drain;
    drain.op = kDrain;
    Command quit;
    quit.op = kQuit;
    for (int w = 1; w <= kWorkers; ++w) {
      Send(w, drain);
      Send(w, quit);
    }
    for (int w = 1; w <= kWorkers; ++w) workers_[w].thread.join();
  }
  Command drain;
  drain.op = kDrain;
  Execute(0, main_table_, drain);
}

void Program::Run() {
  while (data_ < end_) {
    const uint8_t byte = Byte();
    const uint8_t op = byte & 15;
    const int thread = (byte >> 4) % (kWorkers + 1);
    Command c;
    Decode(op, thread, &c);
    const bool involves_workers =
        thread != 0 || op == kGive || op == kTake || op == kExit || op == kSync ||
        (op == kBurst && c.to != 0);
    if (involves_workers) StartWorkers();
    switch (op) {
      case kSync:
        Sync();
        break;
      case kExit:
        ExitWorker(thread != 0 ? thread : c.to);
        break;
      case kTake: {
        // Main takes the block in slot c.slot of a worker, waiting for it.
        const int from = thread != 0 ? thread : c.to;
        Command send;
        send.op = kSendToMain;
        send.slot = c.slot;
        send.to_slot = c.to_slot;
        Send(from, send);
        std::pair<size_t, Block> got;
        {
          std::unique_lock<std::mutex> lock(inbox_mu_);
          inbox_cv_.wait(lock, [&] { return !inbox_.empty(); });
          got = inbox_.front();
          inbox_.pop_front();
        }
        tl_op = "take";
        if (got.second.p != nullptr) {
          Check(got.second);
          Store(main_table_, got.first, got.second);
        }
        break;
      }
      default:
        if (thread == 0) {
          Execute(0, main_table_, c);
        } else {
          Send(thread, c);
        }
        break;
    }
  }
  Finish();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Program program(data, size);
  program.Run();
  return 0;
}
