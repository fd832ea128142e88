// GPU sharing across real processes. Without a GPU: the daemon's fake
// backend (host memory in shared files posing as GPUs) drives the same
// leases, UUID mapping, sharing and refusals through the real daemon,
// client and map_worker processes. With one ([.gpu], run by
// tests/gpu/run.sh): the CUDA backend, measured with cudaMemGetInfo.
#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "support.h"
#include "zerocopy/cuda_device.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy {
namespace {

using testing::Child;
using testing::DaemonProcess;

const std::string kU0 = "GPU-0a0a0a0a-0000-4000-8000-000000000000";
const std::string kU1 = "GPU-1b1b1b1b-1111-4111-8111-111111111111";

// A daemon with gpu_backend = `backend` (fake GPUs kU0 and kU1 of 256 MiB).
struct GpuDaemon {
  testing::TempDir dir;
  std::unique_ptr<DaemonProcess> d;

  explicit GpuDaemon(const std::string& backend, const std::string& host_budget = "1G",
                     std::vector<std::string> env = {}, const std::string& extra_config = "") {
    std::string config = dir.path() + "/zerocopyd.toml";
    std::ofstream(config) << "gpu_backend = \"" << backend << "\"\n"
                          << "fake_gpus = [\"" << kU0 << "\", \"" << kU1 << "\"]\n"
                          << "fake_gpu_memory = \"256M\"\n"
                          << "fake_gpu_dir = \"" << dir.path() << "/fake-gpu\"\n"
                          << extra_config;
    DaemonProcess::Options options;
    options.host_budget = host_budget;
    options.extra_args = {"--config", config};
    options.env = std::move(env);
    d = std::make_unique<DaemonProcess>(options);
    d->Start();
  }
  std::string FakeDir() const { return dir.path() + "/fake-gpu"; }
};

// Sets an environment variable for the children started in a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

v1::ModelInfo PublishModel(const DaemonProcess& d, int tensors, size_t floats_each) {
  auto model = testing::MakeModel(tensors, floats_each, 77);
  PublishOptions options;
  options.name = "shared";
  auto info = d.NewClient()->Publish(model.source, options);
  REQUIRE(info.ok());
  return *info;
}

nlohmann::json RunWorker(const std::vector<std::string>& argv) {
  std::string out, err;
  int rc = testing::Run(argv, &out, &err);
  INFO(err);
  REQUIRE(rc == 0);
  return nlohmann::json::parse(out);
}

std::vector<std::string> WorkerArgs(const DaemonProcess& d, const std::string& gpu) {
  std::vector<std::string> argv = {testing::MapWorkerBinary(), "--socket", d.socket(), "--model", "shared"};
  if (!gpu.empty()) argv.insert(argv.end(), {"--gpu", gpu});
  return argv;
}

v1::GpuStats GpuStatsOf(const DaemonProcess& d, const std::string& uuid) {
  auto stats = d.NewClient()->Stats();
  REQUIRE(stats.ok());
  for (const auto& g : stats->gpus()) {
    if (g.uuid() == uuid) return g;
  }
  return v1::GpuStats();
}

// Polls until the GPU's lease count is `want` (a dead client's session
// ends asynchronously); returns the last count.
uint32_t WaitForLeases(const DaemonProcess& d, const std::string& uuid, uint32_t want) {
  uint32_t leases = 0;
  testing::WaitUntil([&] { return (leases = GpuStatsOf(d, uuid).leases()) == want; }, std::chrono::seconds(5));
  return leases;
}

// GetModel for a device copy of `ref` on `session`, straight through gRPC
// (a call of its own, which the test can cancel).
struct RawGpuGet {
  std::unique_ptr<v1::ModelStore::Stub> stub;
  v1::GetModelRequest request;
  v1::GetModelResponse response;
  grpc::ClientContext ctx;

  RawGpuGet(const DaemonProcess& d, const std::string& ref, uint64_t session, std::chrono::seconds timeout)
      : stub(v1::ModelStore::NewStub(grpc::CreateChannel("unix:" + d.socket(), grpc::InsecureChannelCredentials()))) {
    request.mutable_model()->set_ref(ref);
    request.set_session_id(session);
    request.set_lease(true);
    request.set_gpu_uuid(kU0);
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  }
  grpc::Status Call() { return stub->GetModel(&ctx, request, &response); }
};

// A RawGpuGet on a thread of its own, which the daemon holds at the
// failpoint armed with `hold` (created here) until Release(); released and
// joined however the test ends.
struct HeldGpuGet {
  std::string hold;
  RawGpuGet get;
  grpc::Status status;
  std::thread thread;

  HeldGpuGet(const DaemonProcess& d, std::string hold_file, const std::string& ref, uint64_t session)
      : hold(std::move(hold_file)), get(d, ref, session, std::chrono::seconds(60)) {
    std::ofstream(hold) << "held";
    thread = std::thread([this] { status = get.Call(); });
  }
  void Release() {
    std::remove(hold.c_str());
    if (thread.joinable()) thread.join();
  }
  ~HeldGpuGet() { Release(); }
};

}  // namespace

TEST_CASE("processes on one fake GPU share one device copy, named by UUID, leased until they exit", "[gpu-fake]") {
  GpuDaemon g("fake");
  auto info = PublishModel(*g.d, 4, 1 << 16);
  std::string host_checksum = RunWorker(WorkerArgs(*g.d, ""))["checksum"];

  // This process sees kU0 as its ordinal 1 (as CUDA_VISIBLE_DEVICES=1,0 would).
  ScopedEnv env("ZEROCOPY_FAKE_GPUS", kU1 + "," + kU0);
  auto argv = WorkerArgs(*g.d, kU0);
  argv.push_back("--hold");
  std::vector<std::unique_ptr<Child>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(std::make_unique<Child>(argv));
  for (auto& w : workers) {
    auto line = nlohmann::json::parse(w->ReadLine());
    CHECK(line["mode"] == "zerocopy-gpu");
    CHECK(line["checksum"] == host_checksum);
    CHECK(line["gpu_ordinal"] == 1);
  }
  auto gpu = GpuStatsOf(*g.d, kU0);
  CHECK(gpu.uploads() == 1);
  CHECK(gpu.copies() == 1);
  CHECK(gpu.leases() == 4);
  CHECK(gpu.bytes_used() == info.size());
  CHECK(testing::ListDir(g.FakeDir()).size() == 1);
  auto list = g.d->NewClient()->List();
  REQUIRE(list.ok());
  REQUIRE(list->models(0).gpu_uuids_size() == 1);
  CHECK(list->models(0).gpu_uuids(0) == kU0);

  // Another process numbering the GPUs differently attaches to the same copy.
  {
    ScopedEnv other("ZEROCOPY_FAKE_GPUS", kU0);
    auto line = RunWorker(WorkerArgs(*g.d, kU0));
    CHECK(line["gpu_ordinal"] == 0);
    CHECK(line["checksum"] == host_checksum);
    CHECK(GpuStatsOf(*g.d, kU0).uploads() == 1);
  }

  // Killed with -9: its session ends and so does its lease.
  ::kill(workers[0]->pid(), SIGKILL);
  CHECK(workers[0]->Finish() == 128 + SIGKILL);
  CHECK(WaitForLeases(*g.d, kU0, 3) == 3);
  for (size_t i = 1; i < workers.size(); ++i) CHECK(workers[i]->Finish() == 0);
  CHECK(WaitForLeases(*g.d, kU0, 0) == 0);
  CHECK(GpuStatsOf(*g.d, kU0).copies() == 1);  // kept for the next process until evicted or deleted

  // Deleting the model frees the unleased copy.
  REQUIRE(g.d->NewClient()->Delete("shared").ok());
  CHECK(GpuStatsOf(*g.d, kU0).copies() == 0);
  CHECK(testing::ListDir(g.FakeDir()).empty());
}

// A caller that gives up (its deadline passes, it is cancelled) while its
// device copy is made never learns of its leases: the daemon returns them
// then, not when the caller's process (a long-lived actor) exits.
TEST_CASE("a caller that gives up during the upload keeps no lease", "[gpu-fake]") {
  testing::TempDir dir;
  const std::string hold = dir.path() + "/hold";
  GpuDaemon g("fake", "1G", {"ZEROCOPYD_FAILPOINT=get:device:hold=" + hold});
  PublishModel(*g.d, 2, 1 << 14);
  auto client = g.d->NewClient();
  auto session = client->SessionId();
  REQUIRE(session.ok());

  HeldGpuGet held(*g.d, hold, "shared", *session);
  // Held after the upload, with both leases taken, as they used to be kept.
  testing::WaitUntil([&] { return GpuStatsOf(*g.d, kU0).leases() == 1; }, std::chrono::seconds(20));
  CHECK(GpuStatsOf(*g.d, kU0).uploads() == 1);
  CHECK(GpuStatsOf(*g.d, kU0).leases() == 1);
  held.get.ctx.TryCancel();  // as a deadline passing or the caller exiting would
  // The daemon learns of it from the stream's reset, on a thread the hold
  // does not block: a second is ample before the call goes on.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  held.Release();

  CHECK(WaitForLeases(*g.d, kU0, 0) == 0);
  auto list = client->List();
  REQUIRE(list.ok());
  REQUIRE(list->models_size() == 1);
  CHECK(list->models(0).leases() == 0);  // the host lease too
  auto stats = client->Stats();
  REQUIRE(stats.ok());
  bool found = false;
  for (const auto& s : stats->sessions()) {
    if (s.id() != *session) continue;
    found = true;  // the session itself lives on, with no lease
    CHECK(s.leases() == 0);
  }
  CHECK(found);

  // The copy stays made for the next caller, which gets it without an upload.
  ScopedEnv env("ZEROCOPY_FAKE_GPUS", kU0);
  auto line = RunWorker(WorkerArgs(*g.d, kU0));
  CHECK(line["mode"] == "zerocopy-gpu");
  CHECK(GpuStatsOf(*g.d, kU0).uploads() == 1);
  CHECK(g.d->log().find("went away") != std::string::npos);
}

// Only the first request per model and GPU uploads; the others lease the
// copy made, answered at once even while uploads fill every worker thread.
TEST_CASE("a GPU request for a copy already made never waits behind uploads", "[gpu-fake]") {
  testing::TempDir dir;
  const std::string hold = dir.path() + "/hold";
  GpuDaemon g("fake", "1G", {"ZEROCOPYD_FAILPOINT=gpu:upload:hold=" + hold}, "worker_threads = 1\n");
  auto made = PublishModel(*g.d, 2, 1 << 14);
  auto slow = testing::MakeModel(3, 1 << 14, 78);
  PublishOptions options;
  options.name = "slow";
  REQUIRE(g.d->NewClient()->Publish(slow.source, options).ok());
  ScopedEnv env("ZEROCOPY_FAKE_GPUS", kU0);
  CHECK(RunWorker(WorkerArgs(*g.d, kU0))["mode"] == "zerocopy-gpu");  // "shared" has its copy

  auto client = g.d->NewClient();
  auto session = client->SessionId();
  REQUIRE(session.ok());
  HeldGpuGet upload(*g.d, hold, "slow", *session);
  // The only worker is held in the upload.
  testing::WaitUntil([&] { return GpuStatsOf(*g.d, kU0).copies() == 2; }, std::chrono::seconds(20));
  REQUIRE(GpuStatsOf(*g.d, kU0).copies() == 2);

  RawGpuGet attach(*g.d, "shared", *session, std::chrono::seconds(10));
  grpc::Status attach_status = attach.Call();
  CHECK(attach_status.error_message() == "");
  CHECK(attach_status.ok());
  CHECK(attach.response.device().gpu_uuid() == kU0);
  CHECK(attach.response.model().digest() == made.digest());
  auto line = RunWorker(WorkerArgs(*g.d, kU0));  // a whole process, through MapDevice
  CHECK(line["checksum"] == RunWorker(WorkerArgs(*g.d, ""))["checksum"]);

  upload.Release();
  CHECK(upload.status.ok());
  CHECK(GpuStatsOf(*g.d, kU0).uploads() == 2);
}

TEST_CASE("a deleted model's device copy stays valid for the processes holding it", "[gpu-fake]") {
  GpuDaemon g("fake");
  PublishModel(*g.d, 2, 1 << 14);
  ScopedEnv env("ZEROCOPY_FAKE_GPUS", kU0);
  auto argv = WorkerArgs(*g.d, kU0);
  argv.push_back("--hold");
  Child holder(argv);
  std::string checksum = nlohmann::json::parse(holder.ReadLine())["checksum"];
  REQUIRE(g.d->NewClient()->Delete("shared").ok());
  CHECK(GpuStatsOf(*g.d, kU0).copies() == 1);
  CHECK(testing::ListDir(g.FakeDir()).size() == 1);
  CHECK(holder.Finish() == 0);
  testing::WaitUntil([&] { return GpuStatsOf(*g.d, kU0).copies() == 0; }, std::chrono::seconds(5));
  CHECK(GpuStatsOf(*g.d, kU0).copies() == 0);
  CHECK(testing::ListDir(g.FakeDir()).empty());
  CHECK_FALSE(checksum.empty());
}

TEST_CASE("the shared device copy is writable: a write is seen by every process on that GPU", "[gpu-fake]") {
  GpuDaemon g("fake");
  PublishModel(*g.d, 2, 1 << 14);
  std::string host_before = RunWorker(WorkerArgs(*g.d, ""))["checksum"];
  ScopedEnv env("ZEROCOPY_FAKE_GPUS", kU0);
  auto argv = WorkerArgs(*g.d, kU0);
  argv.insert(argv.end(), {"--scribble", "--hold"});
  Child writer(argv);
  REQUIRE_FALSE(writer.ReadLine().empty());
  auto reader = RunWorker(WorkerArgs(*g.d, kU0));
  CHECK(reader["checksum"] != host_before);                           // the device copy changed for everyone
  CHECK(RunWorker(WorkerArgs(*g.d, ""))["checksum"] == host_before);  // the host segment did not
  CHECK(writer.Finish() == 0);
}

TEST_CASE("a daemon that cannot share GPU memory refuses precisely and keeps serving", "[gpu-fake]") {
  ScopedEnv env("ZEROCOPY_FAKE_GPUS", kU0);
  SECTION("gpu_backend off") {
    GpuDaemon g("off");
    PublishModel(*g.d, 1, 1024);
    std::string out, err;
    CHECK(testing::Run(WorkerArgs(*g.d, kU0), &out, &err) == 1);
    CHECK_THAT(err, Catch::Contains("UNIMPLEMENTED") && Catch::Contains("gpu_backend"));
    CHECK(RunWorker(WorkerArgs(*g.d, ""))["tensors"] == 1);
  }
  SECTION("CUDA backend whose daemon sees no such GPU (none at all, or others)") {
    GpuDaemon g("auto");
    PublishModel(*g.d, 1, 1024);
    // With GPUs or without, the daemon sees none of that UUID (all zeros).
    std::string out, err;
    CHECK(testing::Run(WorkerArgs(*g.d, kU0), &out, &err) == 1);
    CHECK_THAT(err, Catch::Contains(cuda::Compiled() ? "FAILED_PRECONDITION" : "UNIMPLEMENTED"));
    CHECK(RunWorker(WorkerArgs(*g.d, ""))["tensors"] == 1);
    auto stats = g.d->NewClient()->Stats();
    REQUIRE(stats.ok());
    CHECK(stats->gpus_size() == 0);
  }
  SECTION("a GPU this process does not see is refused before the daemon copies anything") {
    GpuDaemon g("fake");
    PublishModel(*g.d, 1, 1024);
    std::string out, err;
    CHECK(testing::Run(WorkerArgs(*g.d, kU1), &out, &err) == 1);
    CHECK_THAT(err, Catch::Contains("NOT_FOUND") && Catch::Contains(kU1));
    CHECK(GpuStatsOf(*g.d, kU1).uploads() == 0);
  }
}

// ---- real GPU (tests/gpu/run.sh) -------------------------------------------

TEST_CASE("four processes on one GPU attach to one device copy", "[.gpu]") {
  auto gpus = cuda::Gpus();
  REQUIRE(gpus.ok());
  REQUIRE_FALSE(gpus->empty());
  const std::string uuid = (*gpus)[0].uuid;
  DaemonProcess::Options options;
  options.host_budget = "8G";
  DaemonProcess d(options);
  d.Start();
  // 1 GiB: 256 tensors of 1 Mi floats.
  auto model = testing::MakeModel(256, 1 << 20, 5);
  PublishOptions publish;
  publish.name = "shared";
  auto info = d.NewClient()->Publish(model.source, publish);
  REQUIRE(info.ok());
  std::string host_checksum = RunWorker(WorkerArgs(d, ""))["checksum"];

  // What each process would pay for a copy of its own: the upload itself.
  auto t0 = std::chrono::steady_clock::now();
  cuda::UploadInfo upload;
  {
    auto region = d.NewClient()->Map("shared");
    REQUIRE(region.ok());
    auto own = cuda::Upload(0, (*region)->data(), (*region)->size(), &upload);
    REQUIRE(own.ok());
  }
  double own_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  auto before = cuda::MemoryInfo(0);
  REQUIRE(before.ok());
  auto argv = WorkerArgs(d, uuid);
  argv.push_back("--hold");
  std::vector<std::unique_ptr<Child>> workers;
  std::vector<double> attach_ms, init_ms;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(std::make_unique<Child>(argv));
    auto line = nlohmann::json::parse(workers.back()->ReadLine());  // one at a time: the first makes the copy
    CHECK(line["checksum"] == host_checksum);
    attach_ms.push_back(line["load_ms"]);
    init_ms.push_back(line["gpu_init_ms"]);
  }
  auto after = cuda::MemoryInfo(0);
  REQUIRE(after.ok());
  const double growth = static_cast<double>(before->first) - static_cast<double>(after->first);
  const double size = static_cast<double>(info->size());
  auto gpu = GpuStatsOf(d, uuid);
  std::printf(
      "GPU %s: model %.0f MiB; 4 processes attached; device memory used grew by %.0f MiB (%.2f model sizes, "
      "CUDA contexts included; 4 private copies would be >= 4.00)\n"
      "attach ms: first (makes the copy) %.1f, then %.1f %.1f %.1f; a private upload takes %.1f ms (%.2f GiB/s, %s); "
      "CUDA start per process (not counted) %.1f %.1f %.1f %.1f ms\n",
      uuid.c_str(), size / (1 << 20), growth / (1 << 20), growth / size, attach_ms[0], attach_ms[1], attach_ms[2],
      attach_ms[3], own_ms, upload.bytes_per_second / (1 << 30), upload.method, init_ms[0], init_ms[1], init_ms[2],
      init_ms[3]);
  {
    std::istringstream log(d.log());
    for (std::string line; std::getline(log, line);) {
      if (line.find("device copy on") != std::string::npos) std::printf("zerocopyd: %s\n", line.c_str());
    }
  }
  CHECK(gpu.uploads() == 1);
  CHECK(gpu.copies() == 1);
  CHECK(gpu.leases() == 4);
  CHECK(growth < 4 * size);

  ::kill(workers[0]->pid(), SIGKILL);
  CHECK(workers[0]->Finish() == 128 + SIGKILL);
  CHECK(WaitForLeases(d, uuid, 3) == 3);
  for (size_t i = 1; i < workers.size(); ++i) CHECK(workers[i]->Finish() == 0);
  CHECK(WaitForLeases(d, uuid, 0) == 0);
  REQUIRE(d.NewClient()->Delete("shared").ok());
  CHECK(GpuStatsOf(d, uuid).copies() == 0);
}

}  // namespace zerocopy
