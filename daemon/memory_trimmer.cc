#include "memory_trimmer.h"

#include <malloc.h>

namespace zerocopy::daemon {

MemoryTrimmer::MemoryTrimmer(std::chrono::milliseconds delay) : delay_(delay), thread_([this] { Run(); }) {}

MemoryTrimmer::~MemoryTrimmer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void MemoryTrimmer::Request() {
  absl::MutexLock lock(&mu_);
  wanted_ = true;
}

uint64_t MemoryTrimmer::trims() const {
  absl::MutexLock lock(&mu_);
  return trims_;
}

void MemoryTrimmer::Run() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(
        +[](MemoryTrimmer* t) ABSL_NO_THREAD_SAFETY_ANALYSIS { return t->wanted_ || t->stopping_; }, this));
    if (stopping_) return;
    // Let the calls that asked finish and free their requests; what more
    // is freed meanwhile is trimmed by this same pass.
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(delay_));
    if (stopping_) return;
    wanted_ = false;
    mu_.Unlock();
    ::malloc_trim(0);
    mu_.Lock();
    ++trims_;
  }
}

}  // namespace zerocopy::daemon
