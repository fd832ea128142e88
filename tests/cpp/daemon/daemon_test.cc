// zerocopyd end to end: the real daemon on a temporary socket and segment
// directory, driven by the real client and, for what the client never
// does, by raw gRPC calls.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "support.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;
using testing::MakeModel;
using testing::TestModel;

constexpr size_t kMiBFloats = (1u << 20) / sizeof(float);

void RequireSameBytes(const MappedModel& mapped, const TestModel& model) {
  REQUIRE(mapped.tensor_count() == model.buffers.size());
  for (size_t i = 0; i < model.buffers.size(); ++i) {
    auto view = mapped.Find("layer." + std::to_string(i) + ".weight");
    REQUIRE(view.ok());
    REQUIRE(view->extent == model.buffers[i].size() * sizeof(float));
    REQUIRE(std::memcmp(view->data, model.buffers[i].data(), view->extent) == 0);
  }
}

std::vector<std::string> Staging(const DaemonProcess& d) {
  std::vector<std::string> found;
  for (const auto& f : testing::ListDir(d.segment_dir())) {
    if (f.rfind("staging-", 0) == 0) found.push_back(f);
  }
  return found;
}

bool Alive(const DaemonProcess& d) { return d.running() && ::kill(d.pid(), 0) == 0; }

// Raw protocol access for the calls the client library wraps.
struct Raw {
  explicit Raw(const DaemonProcess& d)
      : stub(v1::ModelStore::NewStub(grpc::CreateChannel("unix:" + d.socket(), grpc::InsecureChannelCredentials()))) {}
  grpc::Status Create(const v1::Manifest& manifest, v1::CreateModelResponse* response) {
    grpc::ClientContext ctx;
    v1::CreateModelRequest request;
    *request.mutable_manifest() = manifest;
    return stub->CreateModel(&ctx, request, response);
  }
  grpc::Status Commit(const std::string& id, const std::string& digest, v1::CommitModelResponse* response) {
    grpc::ClientContext ctx;
    v1::CommitModelRequest request;
    request.set_staging_id(id);
    request.set_digest(digest);
    return stub->CommitModel(&ctx, request, response);
  }
  grpc::Status Abort(const std::string& id) {
    grpc::ClientContext ctx;
    v1::AbortModelRequest request;
    request.set_staging_id(id);
    v1::AbortModelResponse response;
    return stub->AbortModel(&ctx, request, &response);
  }
  std::unique_ptr<v1::ModelStore::Stub> stub;
};

// Writes the model's storages into a staging segment and returns the
// digest the daemon will compute.
std::string FillStaging(const v1::CreateModelResponse& created, const TestModel& model) {
  int fd = ::open(created.segment_path().c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const auto& m = created.manifest();
  std::vector<uint8_t> segment(m.total_size());
  for (int s = 0; s < m.storages_size(); ++s) {
    std::memcpy(segment.data() + m.storages(s).offset(), model.buffers[static_cast<size_t>(s)].data(),
                m.storages(s).size());
  }
  REQUIRE(::pwrite(fd, segment.data(), segment.size(), 0) == static_cast<ssize_t>(segment.size()));
  ::close(fd);
  return ComputeDigest(segment.data(), segment.size(), m);
}

TEST_CASE("publish, get and map a model", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(5, 1000, 1);
  PublishOptions options;
  options.name = "tiny";
  auto info = client->Publish(model.source, options);
  REQUIRE(info.ok());
  REQUIRE(IsDigest(info->digest()));
  REQUIRE(info->names(0) == "tiny");
  REQUIRE(info->tensor_count() == 5);

  auto by_name = client->Map("tiny");
  REQUIRE(by_name.ok());
  RequireSameBytes(**by_name, model);
  REQUIRE((*by_name)->digest() == info->digest());
  for (size_t i = 0; i < (*by_name)->tensor_count(); ++i) {
    REQUIRE(reinterpret_cast<uintptr_t>((*by_name)->tensor(i).data) % kStorageAlignment == 0);
  }
  auto by_digest = client->Map(info->digest());
  REQUIRE(by_digest.ok());
  RequireSameBytes(**by_digest, model);
  REQUIRE((*by_digest)->ComputeDigest() == info->digest());

  auto list = client->List();
  REQUIRE(list.ok());
  REQUIRE(list->models_size() == 1);
  REQUIRE(list->models(0).leases() == 1);  // one session, however many mappings
  auto stats = client->Stats();
  REQUIRE(stats.ok());
  REQUIRE(stats->models() == 1);
  REQUIRE(stats->bytes_used() == info->size());
  REQUIRE(stats->bytes_staging() == 0);
  REQUIRE(Staging(d).empty());

  by_name->reset();
  by_digest->reset();
  testing::WaitUntil([&] { return client->List()->models(0).leases() == 0; }, std::chrono::seconds(5));
  REQUIRE(client->List()->models(0).leases() == 0);

  auto missing = client->Map("nope");
  REQUIRE(missing.status().code() == absl::StatusCode::kNotFound);
  REQUIRE_THAT(std::string(missing.status().message()), Catch::Contains("nope"));
}

TEST_CASE("the same weights published twice are stored once", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(3, kMiBFloats / 4, 2);
  auto first = client->Publish(model.source);
  REQUIRE(first.ok());
  uint64_t used = client->Stats()->bytes_used();
  PublishOptions named;
  named.name = "again";
  auto second = client->Publish(model.source, named);
  REQUIRE(second.ok());
  REQUIRE(second->digest() == first->digest());
  REQUIRE(second->names_size() == 1);
  REQUIRE(client->Stats()->bytes_used() == used);
  int segments = 0;
  for (const auto& f : testing::ListDir(d.segment_dir())) segments += f.size() > 4 && f.substr(f.size() - 4) == ".seg";
  REQUIRE(segments == 1);
  REQUIRE(Staging(d).empty());

  TestModel other = MakeModel(3, kMiBFloats / 4, 3);
  auto third = client->Publish(other.source);
  REQUIRE(third.ok());
  REQUIRE(third->digest() != first->digest());
}

TEST_CASE("bad names are refused everywhere", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(1, 10, 4);
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  for (const std::string& name :
       {std::string("a/b"), std::string(".."), std::string("x\0y", 3), std::string(10000, 'n')}) {
    PublishOptions options;
    options.name = name;
    REQUIRE(client->Publish(model.source, options).status().code() == absl::StatusCode::kInvalidArgument);
    REQUIRE(client->Tag(name, info->digest()).status().code() == absl::StatusCode::kInvalidArgument);
    REQUIRE(client->Get(name).status().code() == absl::StatusCode::kInvalidArgument);
  }
  REQUIRE(Alive(d));
  REQUIRE(client->List()->models(0).names_size() == 0);
}

TEST_CASE("commit checks the digest and each staging model commits once", "[daemon]") {
  DaemonProcess d;
  d.Start();
  Raw raw(d);
  TestModel model = MakeModel(2, 1000, 5);

  SECTION("a wrong digest drops the model") {
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(model.source.manifest, &created).ok());
    REQUIRE(Staging(d).size() == 1);
    FillStaging(created, model);
    v1::CommitModelResponse committed;
    auto status = raw.Commit(created.staging_id(), std::string(32, '0'), &committed);
    REQUIRE(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    REQUIRE_THAT(status.error_message(), Catch::Contains("digest mismatch"));
    REQUIRE(Staging(d).empty());
    REQUIRE(d.NewClient()->List()->models_size() == 0);
    REQUIRE(d.NewClient()->Stats()->bytes_staging() == 0);
  }
  SECTION("commit twice") {
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(model.source.manifest, &created).ok());
    std::string digest = FillStaging(created, model);
    v1::CommitModelResponse committed;
    REQUIRE(raw.Commit(created.staging_id(), digest, &committed).ok());
    REQUIRE(committed.model().digest() == digest);
    REQUIRE(raw.Commit(created.staging_id(), digest, &committed).error_code() == grpc::StatusCode::NOT_FOUND);
    REQUIRE(d.NewClient()->List()->models_size() == 1);
  }
  SECTION("abort returns the space") {
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(model.source.manifest, &created).ok());
    REQUIRE(d.NewClient()->Stats()->bytes_staging() == created.manifest().total_size());
    REQUIRE(raw.Abort(created.staging_id()).ok());
    REQUIRE(Staging(d).empty());
    REQUIRE(d.NewClient()->Stats()->bytes_staging() == 0);
    v1::CommitModelResponse committed;
    REQUIRE(raw.Commit(created.staging_id(), std::string(32, '0'), &committed).error_code() ==
            grpc::StatusCode::NOT_FOUND);
    REQUIRE(raw.Abort(created.staging_id()).error_code() == grpc::StatusCode::NOT_FOUND);
  }
  SECTION("a staging file truncated by its publisher is refused") {
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(model.source.manifest, &created).ok());
    std::string digest = FillStaging(created, model);
    REQUIRE(::truncate(created.segment_path().c_str(), 100) == 0);
    v1::CommitModelResponse committed;
    auto status = raw.Commit(created.staging_id(), digest, &committed);
    REQUIRE_FALSE(status.ok());
    REQUIRE(Staging(d).empty());
  }
  SECTION("a publisher still holding the file open for writing cannot commit") {
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(model.source.manifest, &created).ok());
    std::string digest = FillStaging(created, model);
    int writer = ::open(created.segment_path().c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(writer >= 0);
    v1::CommitModelResponse committed;
    auto status = raw.Commit(created.staging_id(), digest, &committed);
    ::close(writer);
    REQUIRE(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    REQUIRE_THAT(status.error_message(), Catch::Contains("still open for writing"));
    REQUIRE(Staging(d).empty());
    REQUIRE(d.NewClient()->List()->models_size() == 0);
  }
  SECTION("a staging file with a second link cannot commit") {
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(model.source.manifest, &created).ok());
    std::string digest = FillStaging(created, model);
    testing::TempDir elsewhere("/dev/shm");
    REQUIRE(::link(created.segment_path().c_str(), (elsewhere.path() + "/kept").c_str()) == 0);
    v1::CommitModelResponse committed;
    auto status = raw.Commit(created.staging_id(), digest, &committed);
    REQUIRE(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    REQUIRE_THAT(status.error_message(), Catch::Contains("links"));
  }
  SECTION("invalid manifests and unknown ids") {
    v1::Manifest bad = model.source.manifest;
    bad.mutable_tensors(0)->set_byte_offset(1u << 30);
    v1::CreateModelResponse created;
    REQUIRE(raw.Create(bad, &created).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    v1::CommitModelResponse committed;
    REQUIRE(raw.Commit("../../etc/passwd", std::string(32, '0'), &committed).error_code() ==
            grpc::StatusCode::NOT_FOUND);
    REQUIRE(raw.Abort("").error_code() == grpc::StatusCode::NOT_FOUND);
    REQUIRE(Staging(d).empty());
  }
  REQUIRE(Alive(d));
}

TEST_CASE("a model deleted while mapped stays readable to its mappers", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(4, kMiBFloats / 8, 6);
  PublishOptions options;
  options.name = "doomed";
  auto info = client->Publish(model.source, options);
  REQUIRE(info.ok());
  auto mapped = client->Map("doomed");
  REQUIRE(mapped.ok());
  auto deleted = client->Delete("doomed");
  REQUIRE(deleted.ok());
  REQUIRE(*deleted == info->digest());
  REQUIRE(client->Get("doomed").status().code() == absl::StatusCode::kNotFound);
  REQUIRE(client->Get(info->digest()).status().code() == absl::StatusCode::kNotFound);
  REQUIRE(::access(info->segment_path().c_str(), F_OK) != 0);
  RequireSameBytes(**mapped, model);
  REQUIRE(client->Stats()->bytes_used() == 0);
}

TEST_CASE("pinned models are not deleted without force", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(1, 100, 7);
  PublishOptions options;
  options.name = "keep";
  options.pin = true;
  auto info = client->Publish(model.source, options);
  REQUIRE(info.ok());
  REQUIRE(info->pinned());
  auto refused = client->Delete("keep");
  REQUIRE(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("pinned"));
  REQUIRE(client->Delete("keep", /*force=*/true).ok());
  REQUIRE(client->List()->models_size() == 0);
}

TEST_CASE("the host budget evicts least recently used models, never pinned or leased ones", "[daemon]") {
  DaemonProcess::Options options;
  options.host_budget = "3M";
  DaemonProcess d(options);
  d.Start();
  auto client = d.NewClient();
  std::vector<TestModel> models;
  std::vector<std::string> digests;
  for (uint32_t i = 0; i < 6; ++i) models.push_back(MakeModel(1, kMiBFloats, 100 + i));
  auto publish = [&](size_t i, bool pin = false) {
    PublishOptions o;
    o.name = "m" + std::to_string(i);
    o.pin = pin;
    return client->Publish(models[i].source, o);
  };
  for (size_t i = 0; i < 3; ++i) {
    auto info = publish(i);
    REQUIRE(info.ok());
    digests.push_back(info->digest());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(client->Stats()->bytes_used() == 3u << 20);

  // m0 is used again, so m1 is now the least recently used.
  REQUIRE(client->Get("m0").ok());
  REQUIRE(publish(3).ok());
  REQUIRE(client->Get("m1").status().code() == absl::StatusCode::kNotFound);
  REQUIRE(client->Get("m0").ok());
  REQUIRE(client->Stats()->evictions() == 1);
  REQUIRE(client->Stats()->bytes_used() == 3u << 20);

  // Pin m2 and map m3: with m0 the only candidate, it goes next.
  REQUIRE(client->Pin("m2").ok());
  auto mapped = client->Map("m3");
  REQUIRE(mapped.ok());
  REQUIRE(publish(4).ok());
  REQUIRE(client->Get("m0").status().code() == absl::StatusCode::kNotFound);
  REQUIRE(client->Get("m2").ok());
  RequireSameBytes(**mapped, models[3]);

  // Now everything left is pinned (m2), leased (m3) or just published and
  // pinned (m4): the next model does not fit.
  REQUIRE(client->Pin("m4").ok());
  auto refused = publish(5);
  REQUIRE(refused.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("host budget"));
  REQUIRE(client->Stats()->bytes_staging() == 0);
  REQUIRE(Staging(d).empty());
  REQUIRE(client->List()->models_size() == 3);

  // A model larger than the whole budget is refused outright.
  TestModel huge = MakeModel(1, 4 * kMiBFloats, 9);
  REQUIRE(client->Publish(huge.source).status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(Alive(d));
}

TEST_CASE("a full segment file system is a clear error and returns the space", "[daemon]") {
  testing::TempDir conf;
  std::string path = conf.path() + "/zerocopyd.toml";
  std::ofstream(path) << "tmpfs_reserve = \"1000T\"\n";  // more than any /dev/shm has free
  DaemonProcess::Options options;
  options.extra_args = {"--config", path};
  DaemonProcess d(options);
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(1, 1000, 10);
  auto refused = client->Publish(model.source);
  REQUIRE(refused.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("does not fit in"));
  REQUIRE(client->Stats()->bytes_staging() == 0);
  REQUIRE(Staging(d).empty());
}

TEST_CASE("after kill -9 and restart nothing committed is lost", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel a = MakeModel(3, kMiBFloats / 4, 11), b = MakeModel(2, 1000, 12);
  PublishOptions named;
  named.name = "a";
  auto info_a = client->Publish(a.source, named);
  REQUIRE(info_a.ok());
  named.pin = true;
  named.name = "b";
  REQUIRE(client->Publish(b.source, named).ok());
  auto mapped = client->Map("a");
  REQUIRE(mapped.ok());
  // A publish in progress when the daemon dies.
  Raw raw(d);
  v1::CreateModelResponse created;
  REQUIRE(raw.Create(MakeModel(1, 1000, 13).source.manifest, &created).ok());
  REQUIRE(Staging(d).size() == 1);

  REQUIRE(d.Stop(SIGKILL) == 128 + SIGKILL);
  RequireSameBytes(**mapped, a);                     // the mapping outlives the daemon
  REQUIRE(::access(d.socket().c_str(), F_OK) == 0);  // a stale socket is left behind

  d.Start();  // replaces the stale socket
  REQUIRE(Staging(d).empty());
  auto fresh = d.NewClient();
  auto list = fresh->List();
  INFO(list.status().ToString() << "\n" << d.log());
  REQUIRE(list.ok());
  REQUIRE(list->models_size() == 2);
  auto again = fresh->Map("a");
  REQUIRE(again.ok());
  REQUIRE((*again)->digest() == info_a->digest());
  RequireSameBytes(**again, a);
  REQUIRE(fresh->Get("b")->model().pinned());
  RequireSameBytes(**mapped, a);
  REQUIRE_THAT(d.log(), Catch::Contains("staging_removed=1"));
}

TEST_CASE("a second daemon on the same socket or segment directory is refused", "[daemon]") {
  DaemonProcess d;
  d.Start();
  std::vector<std::string> argv = d.Args();
  argv.insert(argv.begin(), testing::DaemonBinary());
  std::string err;
  int status = testing::Run(argv, nullptr, &err);
  REQUIRE(status != 0);
  REQUIRE_THAT(err, Catch::Contains("another zerocopyd"));
  REQUIRE(Alive(d));
  REQUIRE(d.NewClient()->List().ok());  // the first one still serves

  // Same segment directory, different socket.
  testing::TempDir other;
  argv = {testing::DaemonBinary(), "--socket", other.path() + "/s.sock", "--segment-dir", d.segment_dir()};
  status = testing::Run(argv, nullptr, &err);
  REQUIRE(status != 0);
  REQUIRE_THAT(err, Catch::Contains("in use by another zerocopyd (pid " + std::to_string(d.pid()) + ")"));
  REQUIRE(d.NewClient()->List().ok());
}

TEST_CASE("a manifest of 100,000 tensors", "[daemon]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  TestModel model = MakeModel(100000, 4, 14);
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  REQUIRE(info->tensor_count() == 100000);
  auto mapped = client->Map(info->digest());
  REQUIRE(mapped.ok());
  RequireSameBytes(**mapped, model);
}

TEST_CASE("the daemon stops cleanly on SIGTERM and removes its socket", "[daemon]") {
  DaemonProcess d;
  d.Start();
  REQUIRE(d.Stop(SIGTERM) == 0);
  REQUIRE(::access(d.socket().c_str(), F_OK) != 0);
  auto client = d.NewClient();
  auto list = client->List();
  REQUIRE(list.status().code() == absl::StatusCode::kUnavailable);
  REQUIRE_THAT(std::string(list.status().message()), Catch::Contains(d.socket()));
}

}  // namespace
}  // namespace zerocopy
