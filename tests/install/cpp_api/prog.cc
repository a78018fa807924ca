// A C++ program on ferry's own API: ferry.h, ferry_flush, ferry_stats_get and
// ferry::allocator<T> in standard containers. C++17 and C++20.
#include <cstdio>
#include <map>
#include <thread>
#include <vector>

#include "ferry.h"

int main() {
  std::vector<int, ferry::allocator<int>> numbers;
  for (int i = 0; i < 100000; ++i) numbers.push_back(i);
  std::map<int, long, std::less<int>, ferry::allocator<std::pair<const int, long>>> squares;
  for (int i = 0; i < 1000; ++i) squares[i] = long{i} * i;
  if (ferry_usable_size(numbers.data()) < numbers.size() * sizeof(int)) return 1;

  // Blocks made here, freed on another thread, flushed home.
  std::vector<void*> blocks;
  for (int i = 0; i < 1000; ++i) blocks.push_back(ferry_malloc(64 + i % 200));
  std::thread([&] {
    for (void* p : blocks) ferry_free(p);
    ferry_flush();
  }).join();
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  if (stats.remote_frees < 1000 || stats.blocks_returned < 1000) return 2;
  if (squares[999] != 998001L) return 3;
  // Every ferry::allocator is equal to every other (also built as C++17,
  // where != is not written from ==).
  const ferry::allocator<int> ints;
  const ferry::allocator<long> longs;
  if (!(ints == longs) || ints != longs) return 4;
  std::printf("c++ api ok (ferry %d)\n", FERRY_VERSION);
  return 0;
}
