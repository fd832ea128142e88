// A fixed pool of threads for the calls that can take long: a commit hashes
// its whole segment, a model's first request for a GPU uploads a copy.
// gRPC runs every handler on a small set of its own threads; if slow calls
// held all of them, every other call (GetModel, sessions, stats) would wait
// behind them. Handed to this pool, a slow call holds one of its threads
// and answers from there; when all of them are busy the next slow call
// waits its turn, and everything else is still served.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace zerocopy::daemon {

class WorkQueue {
 public:
  explicit WorkQueue(unsigned threads);
  ~WorkQueue();  // runs every task already queued, then joins
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Run(std::function<void()> task);

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace zerocopy::daemon
