// Which models to evict to make room: least recently used first, among
// those neither pinned nor leased (the caller picks the candidates).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace zerocopy::daemon {

struct EvictionCandidate {
  std::string digest;
  uint64_t size = 0;
  int64_t last_used_ms = 0;
};

struct EvictionPlan {
  std::vector<std::string> victims;  // least recently used first
  uint64_t freeable = 0;             // their bytes; less than asked when all of them are not enough
};

// The fewest least-recently-used candidates whose sizes reach `need` (all
// of them when they do not).
EvictionPlan PlanEviction(std::vector<EvictionCandidate> candidates, uint64_t need);

}  // namespace zerocopy::daemon
