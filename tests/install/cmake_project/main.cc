// Plain C++: with ferry linked, new and delete are ferry's.
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"

int main() {
  std::vector<std::unique_ptr<std::string>> words;
  for (int i = 0; i < 10000; ++i) words.push_back(std::make_unique<std::string>(100, 'x'));
  std::thread([&] { words.clear(); }).join();  // freed on another thread
  ferry_flush();
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  if (stats.remote_frees == 0) return 1;  // new/delete did not go through ferry
  std::puts("cmake ok");
  return 0;
}
