// DevicePool against the fake backend (host memory behind the CUDA
// backend's interface): leases, budgets, LRU eviction, dropped models and
// concurrent requests, in process.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "device_pool.h"
#include "support.h"

namespace zerocopy::daemon {
namespace {

const std::string kGpu0 = "GPU-00000000-0000-0000-0000-000000000000";
const std::string kGpu1 = "GPU-11111111-1111-1111-1111-111111111111";

struct Fixture {
  testing::TempDir dir{"/dev/shm"};
  std::vector<uint8_t> bytes = std::vector<uint8_t>(8 << 20, 0x5A);  // at least any size asked for
  std::atomic<int> host_reads{0};
  std::unique_ptr<DevicePool> pool;

  explicit Fixture(uint64_t memory = 8 << 20, double fraction = 0.5) {
    DevicePoolOptions options;
    options.budget_fraction = fraction;
    pool = std::make_unique<DevicePool>(MakeFakeBackend({kGpu0, kGpu1}, memory, dir.path() + "/gpu"), options);
  }
  DevicePool::HostSource Host(std::chrono::milliseconds delay = std::chrono::milliseconds(0)) {
    return [this, delay]() -> absl::StatusOr<DevicePool::HostBytes> {
      ++host_reads;
      std::this_thread::sleep_for(delay);
      return DevicePool::HostBytes{bytes.data(), nullptr};
    };
  }
  absl::StatusOr<v1::DeviceCopy> Acquire(uint64_t session, const std::string& digest, uint64_t size,
                                         const std::string& gpu = kGpu0) {
    return pool->Acquire(session, digest, gpu, size, Host());
  }
  v1::GpuStats Gpu(const std::string& uuid = kGpu0) {
    for (auto& g : pool->Stats()) {
      if (g.uuid() == uuid) return g;
    }
    return v1::GpuStats();
  }
  std::string FakePath(const v1::DeviceCopy& copy) { return copy.ipc_handle().substr(5); }
};

}  // namespace

TEST_CASE("a device copy is made once and leased per session", "[device]") {
  Fixture f;
  auto a = f.Acquire(1, "m", 1 << 20);
  REQUIRE(a.ok());
  auto b = f.Acquire(2, "m", 1 << 20);
  REQUIRE(b.ok());
  CHECK(a->ipc_handle() == b->ipc_handle());
  CHECK(a->backend() == "fake");
  CHECK(a->gpu_uuid() == kGpu0);
  CHECK(f.host_reads == 1);
  auto g = f.Gpu();
  CHECK(g.uploads() == 1);
  CHECK(g.copies() == 1);
  CHECK(g.leases() == 2);
  CHECK(g.bytes_used() == (1u << 20));
  CHECK(g.budget() == (4u << 20));
  CHECK(f.pool->GpusOf("m") == std::vector<std::string>{kGpu0});

  // Another GPU: another copy.
  REQUIRE(f.Acquire(1, "m", 1 << 20, kGpu1).ok());
  CHECK(f.host_reads == 2);

  REQUIRE(f.pool->Release(1, "m", kGpu0).ok());
  CHECK(f.Gpu().leases() == 1);
  CHECK(absl::IsNotFound(f.pool->Release(1, "m", kGpu0)));
  f.pool->CloseSession(2);
  CHECK(f.Gpu().leases() == 0);
  CHECK(f.Gpu().copies() == 1);  // unleased copies stay until evicted or dropped
  CHECK(::access(f.FakePath(*a).c_str(), F_OK) == 0);
  f.pool->DropModel("m");
  CHECK(f.Gpu().copies() == 0);
  CHECK(f.Gpu().bytes_used() == 0);
  // Freed by Reap, outside the registry's lock.
  CHECK(::access(f.FakePath(*a).c_str(), F_OK) == 0);
  f.pool->Reap();
  CHECK(::access(f.FakePath(*a).c_str(), F_OK) != 0);
}

TEST_CASE("a dropped model's device copy lives until its last lease", "[device]") {
  Fixture f;
  auto a = f.Acquire(1, "m", 1 << 20);
  REQUIRE(a.ok());
  f.pool->DropModel("m");
  CHECK(f.Gpu().copies() == 1);
  CHECK(f.pool->GpusOf("m").empty());
  CHECK(::access(f.FakePath(*a).c_str(), F_OK) == 0);
  f.pool->CloseSession(1);
  CHECK(f.Gpu().copies() == 0);
  f.pool->Reap();
  CHECK(::access(f.FakePath(*a).c_str(), F_OK) != 0);
}

TEST_CASE("the GPU budget evicts unleased copies, least recently used first", "[device]") {
  Fixture f;  // 8 MiB fake GPU, budget 50%: 4 MiB
  REQUIRE(f.Acquire(1, "a", 1536 << 10).ok());
  REQUIRE(f.Acquire(1, "b", 1536 << 10).ok());
  // Leased: nothing may go.
  auto c = f.Acquire(1, "c", 1536 << 10);
  REQUIRE(absl::IsResourceExhausted(c.status()));
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("leased by running processes"));
  CHECK(f.Gpu().copies() == 2);
  // Too big for the budget at all.
  auto huge = f.Acquire(2, "h", 5 << 20);
  REQUIRE(absl::IsResourceExhausted(huge.status()));
  CHECK_THAT(std::string(huge.status().message()), Catch::Contains("exceeds the budget"));

  REQUIRE(f.pool->Release(1, "b", kGpu0).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(f.pool->Release(1, "a", kGpu0).ok());  // a: used more recently than b
  REQUIRE(f.Acquire(1, "c", 1536 << 10).ok());
  CHECK(f.Gpu().evictions() == 1);
  CHECK(f.pool->GpusOf("b").empty());
  CHECK(f.pool->GpusOf("a") == std::vector<std::string>{kGpu0});
  CHECK(f.Gpu().bytes_used() == 2 * (1536u << 10));
}

TEST_CASE("concurrent requests for one model on one GPU make one copy", "[device]") {
  Fixture f;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  std::vector<std::string> handles(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto copy = f.pool->Acquire(100 + i, "m", kGpu0, 1 << 20, f.Host(std::chrono::milliseconds(100)));
      if (copy.ok()) {
        ++ok;
        handles[i] = copy->ipc_handle();
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == 8);
  CHECK(f.host_reads == 1);
  CHECK(f.Gpu().uploads() == 1);
  CHECK(f.Gpu().leases() == 8);
  for (const auto& h : handles) CHECK(h == handles[0]);
}

TEST_CASE("a lease-only request leases a ready copy and never uploads or waits", "[device]") {
  Fixture f;
  auto lease_only = [&](uint64_t session) {
    return f.pool->Acquire(session, "m", kGpu0, 1 << 20, f.Host(), DevicePool::Mode::kLeaseOnly);
  };
  // A GPU not met yet (its first contact creates a CUDA context), then no copy.
  auto first = lease_only(1);
  REQUIRE(DevicePool::IsWouldUpload(first.status()));
  CHECK(absl::IsUnavailable(first.status()));
  REQUIRE(f.Acquire(1, "other", 1024).ok());
  REQUIRE(DevicePool::IsWouldUpload(lease_only(1).status()));
  CHECK(f.host_reads == 1);
  CHECK(f.Gpu().leases() == 1);

  // While another request uploads it: the upload goes on until this one
  // is answered, so an answer that waited for it would be a lease.
  std::atomic<bool> answered{false};
  std::thread uploader([&] {
    (void)f.pool->Acquire(2, "m", kGpu0, 1 << 20, [&]() -> absl::StatusOr<DevicePool::HostBytes> {
      ++f.host_reads;
      for (int i = 0; i < 1000 && !answered; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return DevicePool::HostBytes{f.bytes.data(), nullptr};
    });
  });
  while (f.host_reads < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto during = lease_only(3);
  answered = true;
  uploader.join();
  REQUIRE(DevicePool::IsWouldUpload(during.status()));

  // Ready: leased like any request.
  auto ready = lease_only(3);
  REQUIRE(ready.ok());
  CHECK(f.Gpu().leases() == 3);
  CHECK(f.Gpu().uploads() == 2);
  CHECK(f.host_reads == 2);
  // Other statuses are never taken for the marker.
  CHECK_FALSE(DevicePool::IsWouldUpload(absl::UnavailableError("no driver")));
}

TEST_CASE("device requests are checked: UUID spelling, unknown GPUs, off backend", "[device]") {
  Fixture f;
  auto ordinal = f.Acquire(1, "m", 1024, "cuda:0");
  REQUIRE(absl::IsInvalidArgument(ordinal.status()));
  CHECK_THAT(std::string(ordinal.status().message()), Catch::Contains("not a GPU UUID"));
  auto unknown = f.Acquire(1, "m", 1024, "GPU-22222222-2222-2222-2222-222222222222");
  REQUIRE(absl::IsFailedPrecondition(unknown.status()));
  CHECK_THAT(std::string(unknown.status().message()), Catch::Contains("sees no GPU"));

  DevicePool off(MakeOffBackend(), {});
  auto refused = off.Acquire(1, "m", kGpu0, 1024, f.Host());
  REQUIRE(absl::IsUnimplemented(refused.status()));
  CHECK(off.Stats().empty());

  // A failing host read leaves nothing behind.
  auto failed = f.pool->Acquire(1, "m", kGpu0, 1024,
                                []() -> absl::StatusOr<DevicePool::HostBytes> { return absl::NotFoundError("gone"); });
  REQUIRE(absl::IsNotFound(failed.status()));
  CHECK(f.Gpu().copies() == 0);
  CHECK(f.Gpu().bytes_used() == 0);
}

}  // namespace zerocopy::daemon
