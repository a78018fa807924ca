// perf/smoke/not_an_allocator.cc — a shared library that defines no malloc.
// compare_smoke_test passes it off as ferry's library; the driver must see
// that malloc still comes from glibc and refuse to report it.
extern "C" int ferry_perf_not_an_allocator() { return 0; }
