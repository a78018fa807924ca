// options.h — every FERRY_* environment variable, in one table.
//
// The table below is the single source of truth: the parser, the defaults,
// the bounds and the README's list of variables are all made from it. Values
// are read from the environment once, on the allocator's first slow path,
// without allocating. A value that does not parse or is out of bounds gets a
// one-line warning on stderr and the default.
#ifndef FERRY_COMMON_OPTIONS_H_
#define FERRY_COMMON_OPTIONS_H_

#include <cstddef>
#include <cstdint>

namespace ferry {

// X(field, NAME, default, min, max, choices, help). An option with choices
// ("a|b|c") takes one of those words and holds its index; the others take a
// decimal integer (with an optional k/m/g suffix) within [min, max].
#define FERRY_OPTIONS(X)                                                        \
  X(reclaimers, "FERRY_RECLAIMERS", -1, -1, 64, nullptr,                        \
    "reclaimer threads in the pool; 0 hands every batch back inline on the "    \
    "freeing thread; -1 picks half the CPUs this process may use (affinity "    \
    "mask and cgroup quota), at least 1 and at most 4")                         \
  X(reclaimer_backend, "FERRY_RECLAIMER_BACKEND", 0, 0, 1, "threads|tbb",       \
    "who runs the pool's work: ferry's own threads, or tasks in a dedicated "   \
    "oneTBB task_arena")                                                        \
  X(inline_when_busy, "FERRY_INLINE_WHEN_BUSY", 1, 0, 1, nullptr,               \
    "1: while the process's threads lose their CPUs with the pool at work "   \
    "(more than 500 involuntary context switches a second per reclaimer), "   \
    "freeing threads apply their batches themselves for a while; 0: always "   \
    "hand them to the pool")                                                   \
  X(reclaimer_idle_ms, "FERRY_RECLAIMER_IDLE_MS", 10000, 0, 3600000, nullptr,   \
    "milliseconds the pool of ferry's own threads may stay idle (no batch "    \
    "to apply, nothing left to purge) before it gives back what is idle and "  \
    "its threads exit; the next batch handed on, or the next page a thread "  \
    "gives back while the process has other threads, starts them again; 0 "    \
    "keeps them for good")                                                     \
  X(batch, "FERRY_BATCH", 256, 1, 4096, nullptr,                                \
    "frees of other threads' memory gathered per batch before it is sorted "    \
    "and returned to the owning pages")                                         \
  X(batch_bytes, "FERRY_BATCH_BYTES", 1 << 20, 4096, 1 << 30, nullptr,          \
    "bytes of freed blocks a batch may hold before it is handed on early")     \
  X(purge_delay_ms, "FERRY_PURGE_DELAY_MS", 0, 0, 60000, nullptr,               \
    "milliseconds free memory stays committed before the pool gives it back "   \
    "to the OS, at its next housekeeping run (every 50 ms, down to every "      \
    "400 ms while runs find nothing to do; with no pool, only ferry_collect "   \
    "purges); memory freed less "                                               \
    "than 250 ms ago goes back at most 1 MiB a run, plus half of what no new "  \
    "page needed since the run before; a segment emptied "                      \
    "whole waits this long or 250 ms, whichever is longer, before it goes "     \
    "back to its arena")                                                        \
  X(huge_pages, "FERRY_HUGE_PAGES", 0, 0, 1, nullptr,                           \
    "1 asks the kernel for transparent huge pages (MADV_HUGEPAGE) on the "     \
    "mappings of huge blocks (above 2 MiB): a block written whole takes one "  \
    "page fault per 2 MiB instead of one per 4 KiB, but every huge block "     \
    "holds at least 2 MiB resident (its header shares a huge page with its "   \
    "start), even one never touched, and one touched sparsely up to 2 MiB "    \
    "for each page touched; no effect where the system's transparent huge "    \
    "pages are `never`")                                                       \
  X(stats, "FERRY_STATS", 0, 0, 1, nullptr,                                     \
    "1 prints a statistics table to stderr at exit")                            \
  X(verbose, "FERRY_VERBOSE", 0, 0, 2, nullptr,                                 \
    "1 reports segment, heap, huge-block and pool events on stderr, 2 also "   \
    "every page")

struct Options {
#define FERRY_OPTION_FIELD(field, name, def, lo, hi, choices, help) int64_t field = def;
  FERRY_OPTIONS(FERRY_OPTION_FIELD)
#undef FERRY_OPTION_FIELD
};

struct OptionInfo {
  const char* name;
  int64_t default_value;
  int64_t min_value;
  int64_t max_value;
  const char* choices;  // "a|b" or nullptr
  const char* help;
};

// The table, for documentation and tests.
const OptionInfo* OptionTable(size_t* count);

// Parses one value: returns true and sets *out when `text` is a decimal
// integer (an optional k/m/g suffix multiplies by 1024s) within [lo, hi].
bool ParseOptionValue(const char* text, int64_t lo, int64_t hi, int64_t* out);

// For an option with choices: the index of `text` among "a|b|c", or -1.
int64_t ParseOptionChoice(const char* text, const char* choices);

// Reads the environment into *out, warning about bad values.
void ReadOptionsFromEnvironment(Options* out);

}  // namespace ferry

#endif  // FERRY_COMMON_OPTIONS_H_
