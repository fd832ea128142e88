#include "memory_trimmer.h"

#include <catch2/catch.hpp>

#include "support.h"

namespace zerocopy::daemon {

TEST_CASE("requests close together make one trim, after the delay", "[memory_trimmer]") {
  MemoryTrimmer trimmer(std::chrono::seconds(1));
  REQUIRE(trimmer.trims() == 0);
  for (int i = 0; i < 5; ++i) trimmer.Request();
  REQUIRE(trimmer.trims() == 0);  // not at once: the calls that asked still hold their requests
  REQUIRE(testing::WaitUntil([&] { return trimmer.trims() == 1; }, std::chrono::seconds(5)));
  trimmer.Request();
  REQUIRE(testing::WaitUntil([&] { return trimmer.trims() == 2; }, std::chrono::seconds(5)));
}

TEST_CASE("a trimmer stops at once with a trim pending", "[memory_trimmer]") {
  auto trimmer = std::make_unique<MemoryTrimmer>(std::chrono::hours(1));
  trimmer->Request();
  trimmer.reset();  // would hang for the delay if it waited it out
}

}  // namespace zerocopy::daemon
