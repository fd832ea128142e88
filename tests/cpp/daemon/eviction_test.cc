#include "eviction.h"

#include <catch2/catch.hpp>

namespace zerocopy::daemon {
namespace {

TEST_CASE("eviction takes the least recently used first, and no more than needed", "[eviction]") {
  std::vector<EvictionCandidate> c = {{"new", 100, 30}, {"old", 100, 10}, {"mid", 100, 20}};
  auto plan = PlanEviction(c, 150);
  CHECK(plan.victims == std::vector<std::string>{"old", "mid"});
  CHECK(plan.freeable == 200);
  CHECK(PlanEviction(c, 0).victims.empty());
  CHECK(PlanEviction(c, 100).victims == std::vector<std::string>{"old"});
}

TEST_CASE("when all candidates are not enough, the plan says how much they free", "[eviction]") {
  auto plan = PlanEviction({{"a", 10, 1}, {"b", 20, 2}}, 1000);
  CHECK(plan.victims.size() == 2);
  CHECK(plan.freeable == 30);
  CHECK(PlanEviction({}, 1).freeable == 0);
}

}  // namespace
}  // namespace zerocopy::daemon
