// A C++ program that links libferry.a: operator new/delete and malloc must
// both be ferry's, and the containers that use them must work.
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"

int main() {
  auto* one = new int(7);
  if (ferry_usable_size(one) < sizeof(int)) return 1;
  std::vector<std::string> words;
  for (int i = 0; i < 1000; ++i) words.push_back(std::string(40, static_cast<char>('a' + i % 26)));
  if (ferry_usable_size(words.data()) < words.capacity() * sizeof(std::string)) return 2;
  std::map<int, std::unique_ptr<long[]>> table;
  std::thread worker([&] {
    for (int i = 0; i < 1000; ++i) table[i] = std::make_unique<long[]>(static_cast<size_t>(i + 1));
  });
  worker.join();
  table.clear();  // freed here, on another thread than the one that allocated
  ferry_flush();
  struct alignas(256) Wide { char bytes[256]; };
  auto* wide = new Wide;
  if (reinterpret_cast<uintptr_t>(wide) % 256 != 0) return 3;
  delete wide;
  delete one;
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  if (stats.remote_frees == 0) return 4;
  std::puts("c++ ok");
  return 0;
}
