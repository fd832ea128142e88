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

bool MemoryTrimmer::Woken() const { return wanted_ || stopping_; }

bool MemoryTrimmer::QuietFor(absl::Duration d) {
  wanted_ = false;
  return !mu_.AwaitWithTimeout(absl::Condition(this, &MemoryTrimmer::Woken), d);
}

void MemoryTrimmer::Trim() {
  mu_.Unlock();
  ::malloc_trim(0);
  mu_.Lock();
  ++trims_;
}

void MemoryTrimmer::Run() {
  const absl::Duration delay = absl::FromChrono(delay_);
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(this, &MemoryTrimmer::Woken));
    if (stopping_) return;
    // Wait until the requests stop for `delay`: the calls that asked free
    // their requests only once they are done, and a trim before the last
    // one's frees gives nothing of it back. A stream of requests that never
    // pauses still gets a trim every kMaxWaits delays.
    const absl::Time give_up = absl::Now() + kMaxWaits * delay;
    while (!QuietFor(delay) && !stopping_ && absl::Now() < give_up) {
    }
    if (stopping_) return;
    Trim();
    // Once more later, unless asked again meanwhile: what a slow machine
    // freed after the first pass.
    if (QuietFor(kSettleDelays * delay)) Trim();
    if (stopping_) return;
  }
}

}  // namespace zerocopy::daemon
