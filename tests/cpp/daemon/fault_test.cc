// Faults: the daemon killed with -9 in the middle of publishes, reads and
// evictions; restart time with 100 models; a corrupt or missing catalog; a
// segment altered on disk. After each: nothing committed is lost, no
// staging file remains, nothing half-committed or altered is served, and
// processes that had models mapped read correct bytes throughout.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include <catch2/catch.hpp>

#include "support.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;
using testing::TestModel;

bool SameBytes(const MappedModel& mapped, const TestModel& model) {
  if (mapped.tensor_count() != model.buffers.size()) return false;
  for (size_t i = 0; i < model.buffers.size(); ++i) {
    auto view = mapped.Find("layer." + std::to_string(i) + ".weight");
    if (!view.ok() || view->extent != model.buffers[i].size() * sizeof(float) ||
        std::memcmp(view->data, model.buffers[i].data(), view->extent) != 0) {
      return false;
    }
  }
  return true;
}

std::vector<std::string> StagingFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& f : testing::ListDir(dir)) {
    if (f.rfind("staging-", 0) == 0) out.push_back(f);
  }
  return out;
}

// Every model the daemon lists maps and hashes to its own digest.
void RequireEveryModelWhole(const DaemonProcess& d) {
  auto client = d.NewClient();
  auto list = client->List();
  REQUIRE(list.ok());
  for (const auto& m : list->models()) {
    auto mapped = client->Map(m.digest());
    REQUIRE(mapped.ok());
    CHECK((*mapped)->ComputeDigest() == m.digest());
  }
}

// Restarts `d` with failpoint `point` armed, runs `call`, which must fail
// because the daemon killed itself inside it, then restarts it unarmed.
template <typename Call>
void CrashAt(DaemonProcess& d, const std::string& point, Call call) {
  if (d.running()) d.Stop();
  d.set_env({"ZEROCOPYD_FAILPOINT=" + point});
  d.Start();
  CHECK_FALSE(call().ok());
  CHECK(d.Stop(SIGKILL) == 128 + SIGKILL);
  d.set_env({});
  d.Start();
}

}  // namespace

TEST_CASE("kill -9 during publishes, reads and evictions loses nothing committed", "[faults]") {
  DaemonProcess::Options options;
  options.host_budget = "48M";  // a few churn models fill it: evictions run all the time
  DaemonProcess d(options);
  std::mt19937 rng(7);
  std::vector<TestModel> kept;  // pinned: must survive every kill
  std::vector<std::string> kept_digests;
  std::vector<std::shared_ptr<MappedModel>> held;  // mapped before kills, read after each
  auto holder = std::shared_ptr<Client>();
  uint64_t commits = 0, failed_calls = 0, evictions = 0;
  constexpr int kRounds = 6;
  for (int round = 0; round < kRounds; ++round) {
    d.Start();
    INFO("round " << round << "\n" << d.log());
    REQUIRE(StagingFiles(d.segment_dir()).empty());
    RequireEveryModelWhole(d);
    auto client = d.NewClient();
    for (size_t i = 0; i < kept.size(); ++i) {
      auto m = client->Map(kept_digests[i]);
      REQUIRE(m.ok());
      CHECK(SameBytes(**m, kept[i]));
      CHECK((*m)->info().pinned());
    }
    for (size_t i = 0; i < held.size(); ++i) CHECK(SameBytes(*held[i], kept[i]));

    kept.push_back(testing::MakeModel(2, 65536, 500 + round));
    PublishOptions pinned;
    pinned.name = "kept-" + std::to_string(round);
    pinned.pin = true;
    auto info = client->Publish(kept.back().source, pinned);
    REQUIRE(info.ok());
    kept_digests.push_back(info->digest());
    holder = d.NewClient();
    auto m = holder->Map(info->digest());
    REQUIRE(m.ok());
    held.push_back(*m);

    // Publishers (each model ~4 MiB: the budget evicts) and readers, until the kill.
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> ok{0}, errors{0}, corrupt{0}, published{0};
    std::vector<std::thread> threads;
    for (int w = 0; w < 3; ++w) {
      threads.emplace_back([&, w] {
        auto c = d.NewClient();
        for (int n = 0; !stop; ++n) {
          auto model = testing::MakeModel(4, 262144, static_cast<uint32_t>(round * 100000 + w * 1000 + n));
          auto r = c->Publish(model.source);
          (r.ok() ? ok : errors)++;
          if (r.ok()) ++published;
        }
      });
      threads.emplace_back([&, w] {
        auto c = d.NewClient();
        std::mt19937 pick(static_cast<uint32_t>(round * 10 + w));  // per thread: rng is the main thread's
        while (!stop) {
          size_t i = static_cast<size_t>(pick() % kept.size());
          auto r = c->Map(kept_digests[i]);
          if (!r.ok()) {
            ++errors;
            continue;
          }
          ++ok;
          if (!SameBytes(**r, kept[i])) ++corrupt;
        }
      });
    }
    // Past the budget (12 churn models fill it), so that evictions run,
    // then a random moment.
    auto full = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (published < 14 && std::chrono::steady_clock::now() < full) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
    if (auto s = d.NewClient()->Stats(); s.ok()) evictions += s->evictions();
    REQUIRE(d.Stop(SIGKILL) == 128 + SIGKILL);
    stop = true;
    for (auto& t : threads) t.join();
    CHECK(corrupt == 0);
    commits += ok;
    failed_calls += errors;
    for (size_t i = 0; i < held.size(); ++i) CHECK(SameBytes(*held[i], kept[i]));  // while the daemon is down
  }
  d.Start();
  REQUIRE(StagingFiles(d.segment_dir()).empty());
  RequireEveryModelWhole(d);
  std::printf(
      "faults: %d kills with -9 mid-publish/read/eviction; %llu calls succeeded, %llu failed while the "
      "daemon was down; %llu evictions; every pinned model and every mapping intact\n",
      kRounds, static_cast<unsigned long long>(commits), static_cast<unsigned long long>(failed_calls),
      static_cast<unsigned long long>(evictions));
  CHECK(evictions > 0);
  for (size_t i = 0; i < kept.size(); ++i) {
    auto m = d.NewClient()->Map("kept-" + std::to_string(i));
    REQUIRE(m.ok());
    CHECK(SameBytes(**m, kept[i]));
  }
}

TEST_CASE("restart with 100 models in the catalog", "[faults]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  for (int i = 0; i < 100; ++i) {
    auto model = testing::MakeModel(4, 16384, 9000 + i);  // 256 KiB each
    PublishOptions publish;
    publish.name = "m" + std::to_string(i);
    REQUIRE(client->Publish(model.source, publish).ok());
  }
  client.reset();
  for (int signal : {SIGTERM, SIGKILL}) {
    d.Stop(signal);
    auto t0 = std::chrono::steady_clock::now();
    d.Start();  // returns when the socket accepts connections
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    auto list = d.NewClient()->List();
    REQUIRE(list.ok());
    CHECK(list->models_size() == 100);
    std::printf("restart after %s with 100 models (25 MiB, every segment rehashed): serving in %.0f ms\n",
                signal == SIGTERM ? "SIGTERM" : "kill -9", ms);
  }
}

TEST_CASE("a corrupt or missing catalog keeps the models and says so", "[faults]") {
  DaemonProcess d;
  d.Start();
  auto a = testing::MakeModel(2, 1024, 1), b = testing::MakeModel(2, 1024, 2);
  PublishOptions named;
  named.name = "a";
  REQUIRE(d.NewClient()->Publish(a.source, named).ok());
  named.name = "b";
  named.pin = true;
  REQUIRE(d.NewClient()->Publish(b.source, named).ok());
  const std::string catalog = d.segment_dir() + "/catalog.pb";

  SECTION("corrupt") {
    d.Stop();
    std::ofstream(catalog, std::ios::trunc) << "\xff\xff\xff not a catalog";
    d.Start();
    CHECK_THAT(d.log(), Catch::Contains("catalog unreadable"));
  }
  SECTION("missing") {
    d.Stop();
    REQUIRE(::unlink(catalog.c_str()) == 0);
    d.Start();
    CHECK_THAT(d.log(), Catch::Contains("catalog unreadable"));
  }
  auto list = d.NewClient()->List();
  REQUIRE(list.ok());
  CHECK(list->models_size() == 2);                                  // rebuilt from the segments and their manifests
  for (const auto& m : list->models()) CHECK(m.names_size() == 0);  // names and pins were only in the catalog
  RequireEveryModelWhole(d);
  // A new catalog is written: names given now survive the next restart.
  REQUIRE(d.NewClient()->Tag("a-again", list->models(0).digest()).ok());
  d.Stop();
  d.Start();
  CHECK(d.NewClient()->Get("a-again").ok());
}

TEST_CASE("a segment altered on disk is quarantined at restart and never served", "[faults]") {
  DaemonProcess d;
  d.Start();
  auto a = testing::MakeModel(2, 4096, 31), b = testing::MakeModel(2, 4096, 32);
  PublishOptions named;
  named.name = "a";
  auto info_a = d.NewClient()->Publish(a.source, named);
  REQUIRE(info_a.ok());
  named.name = "b";
  REQUIRE(d.NewClient()->Publish(b.source, named).ok());
  auto mapped = d.NewClient()->Map("a");
  REQUIRE(mapped.ok());
  d.Stop();
  {
    // Root can write a 0440 file: flip one byte in the middle.
    std::string seg = d.segment_dir() + "/" + info_a->digest() + ".seg";
    int fd = ::open(seg.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    char byte;
    REQUIRE(::pread(fd, &byte, 1, 5000) == 1);
    byte ^= 0x40;
    REQUIRE(::pwrite(fd, &byte, 1, 5000) == 1);
    ::close(fd);
  }
  d.Start();
  CHECK_THAT(d.log(), Catch::Contains("quarantined"));
  auto client = d.NewClient();
  auto gone = client->Get(info_a->digest());
  CHECK(absl::IsNotFound(gone.status()));
  CHECK(absl::IsNotFound(client->Get("a").status()));
  CHECK(client->Get("b").ok());
  auto quarantine = testing::ListDir(d.segment_dir() + "/quarantine");
  CHECK(std::find(quarantine.begin(), quarantine.end(), info_a->digest() + ".seg") != quarantine.end());
  RequireEveryModelWhole(d);
}

// Kills the daemon at exact steps through its failpoints (daemon/failpoint.h).
TEST_CASE("killed at each step of a commit, a leased get and an eviction, it recovers exactly", "[faults]") {
  struct Step {
    const char* point;
    bool committed;  // whether the interrupted publish must survive
  };
  for (const Step step : {Step{"commit:hashed", false}, Step{"commit:tagged", false}, Step{"commit:renamed", true}}) {
    DYNAMIC_SECTION(step.point) {
      DaemonProcess d;
      d.Start();
      auto kept = testing::MakeModel(2, 4096, 1);
      PublishOptions named;
      named.name = "kept";
      REQUIRE(d.NewClient()->Publish(kept.source, named).ok());
      auto held = d.NewClient()->Map("kept");
      REQUIRE(held.ok());
      auto fresh = testing::MakeModel(2, 4096, 2);
      named.name = "fresh";
      CrashAt(d, step.point, [&] { return d.NewClient()->Publish(fresh.source, named).status(); });
      INFO(d.log());
      CHECK(StagingFiles(d.segment_dir()).empty());
      RequireEveryModelWhole(d);
      auto got = d.NewClient()->Map("fresh");
      if (step.committed) {
        REQUIRE(got.ok());
        CHECK(SameBytes(**got, fresh));
      } else {
        CHECK(absl::IsNotFound(got.status()));  // also no name left pointing at nothing
      }
      auto again = d.NewClient()->Map("kept");
      REQUIRE(again.ok());
      CHECK(SameBytes(**again, kept));
      CHECK(SameBytes(**held, kept));  // the mapping taken before both crashes
    }
  }
  SECTION("get:leased") {
    DaemonProcess d;
    d.Start();
    auto model = testing::MakeModel(1, 4096, 3);
    PublishOptions named;
    named.name = "m";
    REQUIRE(d.NewClient()->Publish(model.source, named).ok());
    CrashAt(d, "get:leased", [&] { return d.NewClient()->Map("m").status(); });
    auto m = d.NewClient()->Map("m");
    REQUIRE(m.ok());
    CHECK(SameBytes(**m, model));
    auto list = d.NewClient()->List();
    REQUIRE(list.ok());
    CHECK(list->models(0).leases() == 1);  // ours, taken just now: the dead session's is gone
  }
  SECTION("create:evicted") {
    DaemonProcess::Options options;
    options.host_budget = "12M";
    DaemonProcess d(options);
    d.Start();
    auto old_model = testing::MakeModel(2, 1 << 20, 4);  // 8 MiB
    PublishOptions named;
    named.name = "old";
    REQUIRE(d.NewClient()->Publish(old_model.source, named).ok());
    auto pinned = testing::MakeModel(1, 1024, 5);
    named.name = "pinned";
    named.pin = true;
    REQUIRE(d.NewClient()->Publish(pinned.source, named).ok());
    auto big = testing::MakeModel(2, 1 << 20, 6);  // 8 MiB: "old" must go first
    CrashAt(d, "create:evicted", [&] { return d.NewClient()->Publish(big.source).status(); });
    INFO(d.log());
    CHECK(StagingFiles(d.segment_dir()).empty());
    RequireEveryModelWhole(d);
    CHECK(absl::IsNotFound(d.NewClient()->Get("old").status()));  // evicted, and its name with it
    auto p = d.NewClient()->Map("pinned");
    REQUIRE(p.ok());
    CHECK(SameBytes(**p, pinned));
    CHECK(d.NewClient()->Publish(big.source).ok());  // the space came back
  }
}

// Commits hash whole segments and may wait on the disk: however many are
// slow at once, the other calls (GetModel, sessions, stats) keep being
// answered. The failpoint holds every commit after hashing until the test
// lets them go. (Before commits had their own threads, 16 held ones took
// all of gRPC's and this test's Stats timed out.)
TEST_CASE("slow commits do not hold up the other calls", "[faults]") {
  testing::DaemonProcess d;
  const std::string hold = d.segment_dir() + ".hold";
  { std::ofstream(hold) << "held"; }
  d.set_env({"ZEROCOPYD_FAILPOINT=commit:hashed:hold=" + hold});
  d.Start();
  // Four times as many held commits as the daemon has threads for them,
  // and more than gRPC has threads of its own here.
  constexpr int kSlow = 16;
  std::atomic<int> published{0};
  struct Publishers {  // lets the commits go and joins, however the test ends
    std::string hold;
    std::vector<std::thread> threads;
    void Release() {
      std::remove(hold.c_str());
      for (auto& t : threads) t.join();
      threads.clear();
    }
    ~Publishers() { Release(); }
  } publishers{hold, {}};
  for (int i = 0; i < kSlow; ++i) {
    publishers.threads.emplace_back([&, i] {
      auto model = testing::MakeModel(1, 4096, 100 + i);
      if (d.NewClient()->Publish(model.source).ok()) ++published;
    });
  }
  // Every model created, so every commit sent or about to be.
  auto created = [](const v1::GetStatsResponse& s) {
    auto it = s.requests().find("CreateModel");
    return it == s.requests().end() ? uint64_t{0} : it->second;
  };
  auto client = d.NewClient();
  absl::StatusOr<v1::GetStatsResponse> stats;
  testing::WaitUntil(
      [&] {
        stats = client->Stats();
        return !stats.ok() || created(*stats) >= kSlow;
      },
      std::chrono::seconds(60));
  REQUIRE(stats.ok());
  REQUIRE(created(*stats) == kSlow);
  CHECK(stats->bytes_staging() > 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the commits reach the hold
  // Everything else is answered while they are held.
  CHECK(client->Stats().ok());
  CHECK(client->List().ok());
  CHECK(client->SessionId().ok());
  CHECK(published == 0);
  publishers.Release();
  CHECK(published == kSlow);
  auto after = client->List();
  REQUIRE(after.ok());
  CHECK(after->models_size() == kSlow);
}

}  // namespace zerocopy
