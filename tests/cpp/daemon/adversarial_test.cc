// Hostile requests against the real daemon, after the adversarial list of
// Triton's shared-memory tests: offsets out of bounds, size + offset
// overflow, reserved and traversal names, staging ids and GPU UUIDs that
// try to leave the segment directory, oversized messages, a device handle
// of the wrong length. Each gets a precise error, nothing is created, and
// the daemon keeps serving.
#include <stdlib.h>

#include <fstream>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "support.h"
#include "zerocopy/device_model.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;

struct Hostile {
  testing::TempDir dir;
  std::unique_ptr<DaemonProcess> d;
  std::unique_ptr<v1::ModelStore::Stub> stub;
  std::vector<std::string> files_before;

  Hostile() {
    std::string config = dir.path() + "/zerocopyd.toml";
    std::ofstream(config) << "max_message_bytes = \"1M\"\ngpu_backend = \"fake\"\n"
                          << "fake_gpus = [\"GPU-00000000-0000-0000-0000-000000000000\"]\n"
                          << "fake_gpu_dir = \"" << dir.path() << "/gpu\"\n";
    DaemonProcess::Options options;
    options.extra_args = {"--config", config};
    options.host_budget = "256M";
    d = std::make_unique<DaemonProcess>(options);
    d->Start();
    auto model = testing::MakeModel(1, 1024, 1);
    PublishOptions publish;
    publish.name = "good";
    REQUIRE(d->NewClient()->Publish(model.source, publish).ok());
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(64 << 20);
    stub = v1::ModelStore::NewStub(
        grpc::CreateCustomChannel("unix:" + d->socket(), grpc::InsecureChannelCredentials(), args));
    files_before = testing::ListDir(d->segment_dir());
  }

  grpc::StatusCode Create(const v1::Manifest& manifest, const std::string& name = "") {
    v1::CreateModelRequest request;
    *request.mutable_manifest() = manifest;
    request.set_name(name);
    v1::CreateModelResponse response;
    grpc::ClientContext ctx;
    return stub->CreateModel(&ctx, request, &response).error_code();
  }

  // Still serving, and nothing was created or removed.
  void RequireUnharmed() {
    auto got = d->NewClient()->Get("good");
    REQUIRE(got.ok());
    CHECK(testing::ListDir(d->segment_dir()) == files_before);
    auto stats = d->NewClient()->Stats();
    REQUIRE(stats.ok());
    CHECK(stats->bytes_staging() == 0);
  }
};

v1::Manifest OneTensor(uint64_t storage_size, uint64_t byte_offset, std::vector<int64_t> shape,
                       std::vector<int64_t> strides = {}) {
  v1::Manifest m;
  m.add_storages()->set_size(storage_size);
  auto* t = m.add_tensors();
  t->set_name("t");
  t->set_storage(0);
  t->set_byte_offset(byte_offset);
  t->set_dtype(v1::F32);
  for (auto d : shape) t->add_shape(d);
  for (auto s : strides) t->add_strides(s);
  return m;
}

}  // namespace

TEST_CASE("hostile manifests are refused and leave nothing behind", "[adversarial]") {
  Hostile h;
  using grpc::StatusCode;
  CHECK(h.Create(OneTensor(64, 0, {17})) == StatusCode::INVALID_ARGUMENT);              // past its storage
  CHECK(h.Create(OneTensor(64, 60, {2})) == StatusCode::INVALID_ARGUMENT);              // offset + size past it
  CHECK(h.Create(OneTensor(64, UINT64_MAX - 3, {1})) == StatusCode::INVALID_ARGUMENT);  // offset + size overflows
  CHECK(h.Create(OneTensor(64, 0, {INT64_MAX, 2})) == StatusCode::INVALID_ARGUMENT);    // shape product overflows
  CHECK(h.Create(OneTensor(64, 0, {-1})) == StatusCode::INVALID_ARGUMENT);              // negative dimension
  CHECK(h.Create(OneTensor(64, 0, {4, 4}, {INT64_MAX / 2, 1})) == StatusCode::INVALID_ARGUMENT);  // stride overflow
  CHECK(h.Create(OneTensor(64, 0, {4, 4}, {-4, 1})) == StatusCode::INVALID_ARGUMENT);             // negative stride
  CHECK(h.Create(OneTensor(UINT64_MAX, 0, {1})) == StatusCode::INVALID_ARGUMENT);    // segment size overflows
  CHECK(h.Create(OneTensor(1ull << 40, 0, {1})) == StatusCode::RESOURCE_EXHAUSTED);  // beyond the budget
  {
    v1::Manifest m = OneTensor(64, 0, {1});
    m.mutable_tensors(0)->set_storage(7);  // no such storage
    CHECK(h.Create(m) == StatusCode::INVALID_ARGUMENT);
    m = OneTensor(64, 0, {1});
    *m.add_tensors() = m.tensors(0);  // duplicate name
    CHECK(h.Create(m) == StatusCode::INVALID_ARGUMENT);
    m = OneTensor(64, 0, {1});
    m.mutable_tensors(0)->set_dtype(static_cast<v1::DType>(99));
    CHECK(h.Create(m) == StatusCode::INVALID_ARGUMENT);
  }
  {
    // Bigger than max_message_bytes (1 MiB here): refused by gRPC before any handler runs.
    v1::Manifest m = OneTensor(64, 0, {1});
    m.set_metadata(std::string(2 << 20, 'x'));
    CHECK(h.Create(m) == StatusCode::RESOURCE_EXHAUSTED);
  }
  h.RequireUnharmed();
}

TEST_CASE("names, staging ids and GPU UUIDs cannot leave the segment directory", "[adversarial]") {
  Hostile h;
  using grpc::StatusCode;
  for (const std::string& name :
       std::vector<std::string>{"../catalog", "/etc/passwd", "a/b", ".", "..", std::string("a\0b", 3), "",
                                std::string(300, 'n'), ".lock", "staging-x/..", "quarantine/../x"}) {
    INFO("name '" << name << "'");
    // As a name given at publish and as a tag.
    if (!name.empty()) CHECK(h.Create(OneTensor(64, 0, {1}), name) == StatusCode::INVALID_ARGUMENT);
    v1::TagModelRequest tag;
    tag.set_name(name);
    tag.mutable_model()->set_ref("good");
    v1::TagModelResponse tagged;
    grpc::ClientContext ctx;
    CHECK(h.stub->TagModel(&ctx, tag, &tagged).error_code() == StatusCode::INVALID_ARGUMENT);
    // As a model reference.
    v1::GetModelRequest get;
    get.mutable_model()->set_ref(name);
    v1::GetModelResponse got;
    grpc::ClientContext ctx2;
    auto code = h.stub->GetModel(&ctx2, get, &got).error_code();
    CHECK((code == StatusCode::INVALID_ARGUMENT || code == StatusCode::NOT_FOUND));
  }
  for (const std::string& id :
       std::vector<std::string>{"../catalog.pb", "../../etc/passwd", "0123456789abcdef0123456789abcde/", ""}) {
    INFO("staging id '" << id << "'");
    v1::CommitModelRequest commit;
    commit.set_staging_id(id);
    commit.set_digest(std::string(32, '0'));
    v1::CommitModelResponse committed;
    grpc::ClientContext ctx;
    CHECK(h.stub->CommitModel(&ctx, commit, &committed).error_code() == StatusCode::NOT_FOUND);
    v1::AbortModelRequest abort;
    abort.set_staging_id(id);
    v1::AbortModelResponse aborted;
    grpc::ClientContext ctx2;
    CHECK(h.stub->AbortModel(&ctx2, abort, &aborted).error_code() == StatusCode::NOT_FOUND);
  }
  auto session = h.d->NewClient();
  auto id = session->SessionId();
  REQUIRE(id.ok());
  for (const std::string& uuid :
       std::vector<std::string>{"GPU-../../../etc/passwd", "cuda:0", "0", "GPU-00000000-0000-0000-0000-00000000000G",
                                std::string(1000, 'G')}) {
    INFO("gpu uuid '" << uuid << "'");
    v1::GetModelRequest get;
    get.mutable_model()->set_ref("good");
    get.set_session_id(*id);
    get.set_gpu_uuid(uuid);
    v1::GetModelResponse got;
    grpc::ClientContext ctx;
    CHECK(h.stub->GetModel(&ctx, get, &got).error_code() == StatusCode::INVALID_ARGUMENT);
  }
  h.RequireUnharmed();
  CHECK(testing::ListDir(h.dir.path() + "/gpu").empty());
}

TEST_CASE("a device handle of the wrong length or size is refused by the client", "[adversarial]") {
  ::setenv("ZEROCOPY_FAKE_GPUS", "GPU-00000000-0000-0000-0000-000000000000", 1);
  auto model = testing::MakeModel(1, 16, 2);
  v1::Manifest manifest = model.source.manifest;
  manifest.mutable_storages(0)->set_offset(0);
  manifest.set_total_size(64);
  v1::DeviceCopy copy;
  copy.set_gpu_uuid("GPU-00000000-0000-0000-0000-000000000000");
  copy.set_size(64);
  copy.set_backend("cuda");
  copy.set_ipc_handle(std::string(10, 'h'));
  auto opened = DeviceModel::Open(v1::ModelInfo(), manifest, copy);
  CHECK((absl::IsInvalidArgument(opened.status()) || absl::IsUnimplemented(opened.status())));
  copy.set_ipc_handle(std::string(64, 'h'));
  copy.set_size(128);  // not the manifest's size
  CHECK(absl::IsInvalidArgument(DeviceModel::Open(v1::ModelInfo(), manifest, copy).status()));
  copy.set_size(64);
  copy.set_backend("fake");
  copy.set_ipc_handle("/etc/passwd");  // not a fake handle
  CHECK(absl::IsInvalidArgument(DeviceModel::Open(v1::ModelInfo(), manifest, copy).status()));
  copy.set_backend("rdma");
  CHECK(absl::IsUnimplemented(DeviceModel::Open(v1::ModelInfo(), manifest, copy).status()));
  ::unsetenv("ZEROCOPY_FAKE_GPUS");
}

}  // namespace zerocopy
