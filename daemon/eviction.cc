#include "eviction.h"

#include <algorithm>

namespace zerocopy::daemon {

EvictionPlan PlanEviction(std::vector<EvictionCandidate> candidates, uint64_t need) {
  std::stable_sort(candidates.begin(), candidates.end(), [](const EvictionCandidate& a, const EvictionCandidate& b) {
    return a.last_used_ms < b.last_used_ms;
  });
  EvictionPlan plan;
  for (size_t i = 0; i < candidates.size() && plan.freeable < need; ++i) {
    plan.freeable += candidates[i].size;
    plan.victims.push_back(std::move(candidates[i].digest));
  }
  return plan;
}

}  // namespace zerocopy::daemon
