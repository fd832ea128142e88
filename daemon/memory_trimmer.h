// MemoryTrimmer: gives memory the daemon freed back to the kernel.
//
// A manifest of a quarter of a million tensors is parsed into millions of
// small allocations; once freed (refused, aborted, its staging model
// dropped) they sit in the allocator's free lists, where the daemon's RSS
// keeps them for good. Request() asks for a malloc_trim(0) once requests
// have paused for `delay` (gRPC frees a request only once its call is
// done), and for a second one kSettleDelays delays later in case frees came
// late; requests that come close together make one trim. The trims run on
// the trimmer's own thread.
//
// Thread safety: Request may be called from any thread.
#pragma once

#include <chrono>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace zerocopy::daemon {

class MemoryTrimmer {
 public:
  explicit MemoryTrimmer(std::chrono::milliseconds delay = std::chrono::milliseconds(200));
  ~MemoryTrimmer();
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  void Request();
  uint64_t trims() const;  // how many ran (tests)

 private:
  static constexpr int kMaxWaits = 10;      // delays a steady stream of requests may postpone a trim
  static constexpr int kSettleDelays = 10;  // the second trim, in delays after the first

  void Run();
  // Clears wanted_, then waits up to `d` for a request or a stop; true if
  // none came.
  bool QuietFor(absl::Duration d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Woken() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);  // asked for, or stopping
  void Trim() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::chrono::milliseconds delay_;
  mutable absl::Mutex mu_;
  bool wanted_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t trims_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: starts once the fields above exist
};

}  // namespace zerocopy::daemon
