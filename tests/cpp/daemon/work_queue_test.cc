#include "work_queue.h"

#include <atomic>
#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "absl/synchronization/notification.h"

namespace zerocopy::daemon {
namespace {

TEST_CASE("tasks run on the pool's threads, as many at once as it has", "[work_queue]") {
  std::atomic<int> running{0}, most{0}, done{0};
  absl::Notification release;
  {
    WorkQueue queue(2);
    for (int i = 0; i < 6; ++i) {
      queue.Run([&] {
        int now = ++running;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        release.WaitForNotification();
        --running;
        ++done;
      });
    }
    // Two start; the rest wait their turn.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (running.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    CHECK(running.load() == 2);
    CHECK(done.load() == 0);
    release.Notify();
  }  // the destructor runs every queued task first
  CHECK(done.load() == 6);
  CHECK(most.load() == 2);
}

TEST_CASE("a task runs off the thread that queued it", "[work_queue]") {
  WorkQueue queue(1);
  absl::Notification ran;
  std::thread::id where;
  queue.Run([&] {
    where = std::this_thread::get_id();
    ran.Notify();
  });
  REQUIRE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  CHECK(where != std::this_thread::get_id());
}

}  // namespace
}  // namespace zerocopy::daemon
