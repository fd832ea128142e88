#include "memory_trimmer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include <catch2/catch.hpp>

#include "support.h"

namespace zerocopy::daemon {

TEST_CASE("requests close together make one trim, after the delay, and a second one later", "[memory_trimmer]") {
  MemoryTrimmer trimmer(std::chrono::milliseconds(500));
  REQUIRE(trimmer.trims() == 0);
  for (int i = 0; i < 5; ++i) trimmer.Request();
  REQUIRE(trimmer.trims() == 0);  // not at once: the calls that asked still hold their requests
  REQUIRE(testing::WaitUntil([&] { return trimmer.trims() >= 1; }, std::chrono::seconds(5)));
  // The second pass, for what was freed late, comes with no new request.
  REQUIRE(testing::WaitUntil([&] { return trimmer.trims() == 2; }, std::chrono::seconds(15)));
  ::usleep(1000 * 1000);
  REQUIRE(trimmer.trims() == 2);  // and then it rests
  trimmer.Request();
  REQUIRE(testing::WaitUntil([&] { return trimmer.trims() == 3; }, std::chrono::seconds(5)));
}

TEST_CASE("a trim waits until the requests pause, but not for ever", "[memory_trimmer]") {
  // The bug this replays: a trim ran `delay` after the first of a run of
  // requests, before the last one's call had freed its request, and the
  // memory stayed.
  const auto delay = std::chrono::seconds(2);
  MemoryTrimmer trimmer(delay);
  auto last = std::chrono::steady_clock::now();
  auto widest = std::chrono::steady_clock::duration::zero();
  for (int i = 0; i < 12; ++i) {  // every 250 ms for 3 s: longer than the delay, never pausing that long
    trimmer.Request();
    auto now = std::chrono::steady_clock::now();
    widest = std::max(widest, now - last);
    last = now;
    ::usleep(250 * 1000);
  }
  if (widest < delay) REQUIRE(trimmer.trims() == 0);  // unless this machine stalled for a whole delay
  REQUIRE(testing::WaitUntil([&] { return trimmer.trims() >= 1; }, std::chrono::seconds(10)));

  // A stream that never pauses is trimmed all the same, after kMaxWaits delays.
  MemoryTrimmer busy(std::chrono::milliseconds(100));
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  while (std::chrono::steady_clock::now() < until && busy.trims() == 0) {
    busy.Request();
    ::usleep(20 * 1000);
  }
  REQUIRE(busy.trims() >= 1);
}

TEST_CASE("a trimmer stops at once with a trim pending", "[memory_trimmer]") {
  auto trimmer = std::make_unique<MemoryTrimmer>(std::chrono::hours(1));
  trimmer->Request();
  trimmer.reset();  // would hang for the delay if it waited it out
}

}  // namespace zerocopy::daemon
