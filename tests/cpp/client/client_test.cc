// The C++ client's own promises: DLPack exports that keep the mapping
// alive, read-only and populated mappings, strided views, every dtype,
// and where it looks for the socket.
#include <dlpack/dlpack.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include "support.h"
#include "zerocopy/dtype.h"
#include "zerocopy/mapped_model.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;

TEST_CASE("DLPack tensors view the mapping and keep it alive", "[client]") {
  DaemonProcess d;
  d.Start();
  auto model = testing::MakeModel(2, 6, 41);
  // A third tensor: the transpose of layer.0 viewed as 2x3.
  auto* t = model.source.manifest.add_tensors();
  t->set_name("layer.0.T");
  t->set_dtype(v1::F32);
  t->add_shape(3);
  t->add_shape(2);
  t->add_strides(1);
  t->add_strides(3);
  auto client = d.NewClient();
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  REQUIRE(info->storage_count() == 2);
  auto mapped = client->Map(info->digest());
  REQUIRE(mapped.ok());
  auto index = [&](const std::string& name) {
    for (size_t i = 0; i < (*mapped)->tensor_count(); ++i) {
      if ((*mapped)->tensor(i).spec->name() == name) return i;
    }
    FAIL("no tensor " << name);
    return size_t{0};
  };
  auto dl = (*mapped)->ToDLPack(index("layer.0.T"));
  REQUIRE(dl.ok());
  DLTensor& tensor = (*dl)->dl_tensor;
  REQUIRE(tensor.device.device_type == kDLCPU);
  REQUIRE(tensor.dtype.code == kDLFloat);
  REQUIRE(tensor.dtype.bits == 32);
  REQUIRE(tensor.ndim == 2);
  REQUIRE(tensor.shape[0] == 3);
  REQUIRE(tensor.strides[1] == 3);
  const uint8_t* base = (*mapped)->data();
  REQUIRE(static_cast<uint8_t*>(tensor.data) >= base);
  REQUIRE(static_cast<uint8_t*>(tensor.data) < base + (*mapped)->size());
  auto dense = (*mapped)->ToDLPack(index("layer.1.weight"));
  REQUIRE(dense.ok());
  REQUIRE((*dense)->dl_tensor.strides[0] == 1);

  mapped->reset();  // the DLPack tensors still hold the mapping
  const float* f = static_cast<const float*>(tensor.data);
  // element [i][j] of the transpose is layer.0[j*3 + i]
  REQUIRE(f[2 * 1 + 1 * 3] == model.buffers[0][1 * 3 + 2]);
  (*dl)->deleter(*dl);
  (*dense)->deleter(*dense);
}

TEST_CASE("every dtype round-trips and exports", "[client]") {
  DaemonProcess d;
  d.Start();
  ModelSource source;
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<v1::DType> dtypes;
  for (int v = v1::DType_MIN; v <= v1::DType_MAX; ++v) {
    if (v == v1::DTYPE_UNSPECIFIED || !v1::DType_IsValid(v)) continue;
    auto dtype = static_cast<v1::DType>(v);
    dtypes.push_back(dtype);
    size_t size = DTypeSize(dtype) * 5;
    buffers.emplace_back(size);
    for (size_t i = 0; i < size; ++i) buffers.back()[i] = static_cast<uint8_t>(i + static_cast<size_t>(v));
  }
  for (size_t i = 0; i < dtypes.size(); ++i) {
    source.manifest.add_storages()->set_size(buffers[i].size());
    auto* t = source.manifest.add_tensors();
    t->set_name(std::string(DTypeName(dtypes[i])));
    t->set_storage(static_cast<uint32_t>(i));
    t->set_dtype(dtypes[i]);
    t->add_shape(5);
    source.storage_data.push_back(buffers[i].data());
  }
  auto client = d.NewClient();
  auto info = client->Publish(source);
  REQUIRE(info.ok());
  auto mapped = client->Map(info->digest());
  REQUIRE(mapped.ok());
  for (size_t i = 0; i < dtypes.size(); ++i) {
    auto view = (*mapped)->Find(std::string(DTypeName(dtypes[i])));
    REQUIRE(view.ok());
    REQUIRE(std::memcmp(view->data, buffers[i].data(), buffers[i].size()) == 0);
    auto dl = (*mapped)->ToDLPack(i);
    DLDataType expected;
    if (ToDLDataType(dtypes[i], &expected)) {
      REQUIRE(dl.ok());
      REQUIRE((*dl)->dl_tensor.dtype.bits == expected.bits);
      (*dl)->deleter(*dl);
    } else {
      REQUIRE(dl.status().code() == absl::StatusCode::kUnimplemented);
    }
  }
  for (auto required : {v1::F64, v1::F32, v1::F16, v1::BF16, v1::I64, v1::I32, v1::I16, v1::I8, v1::U8, v1::BOOL}) {
    DLDataType dl;
    INFO(DTypeName(required));
    REQUIRE(ToDLDataType(required, &dl));
  }
}

TEST_CASE("read-only mappings fault on write, copy-on-write ones do not", "[client]") {
  DaemonProcess d;
  d.Start();
  auto model = testing::MakeModel(1, 1024, 42);
  auto client = d.NewClient();
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  MapOptions read_only;
  read_only.read_only = true;
  read_only.populate = true;
  auto ro = client->Map(info->digest(), read_only);
  REQUIRE(ro.ok());
  auto cow = client->Map(info->digest());
  REQUIRE(cow.ok());
  pid_t pid = ::fork();
  if (pid == 0) {
    // Default dispositions: neither Catch's handler nor a sanitizer's may
    // turn the fault into an exit code.
    ::signal(SIGSEGV, SIG_DFL);
    ::signal(SIGBUS, SIG_DFL);
    const_cast<uint8_t*>((*ro)->data())[0] = 1;  // must fault
    _exit(0);
  }
  int status;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE((WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS));

  uint8_t* p = const_cast<uint8_t*>((*cow)->data());
  uint8_t old = p[0];
  p[0] = static_cast<uint8_t>(old + 1);
  REQUIRE((*ro)->data()[0] == old);
  REQUIRE((*ro)->ComputeDigest() == info->digest());
}

TEST_CASE("the socket comes from ZEROCOPY_SOCKET, then the defaults", "[client]") {
  const char* saved = ::getenv("ZEROCOPY_SOCKET");
  std::string restore = saved ? saved : "";
  ::setenv("ZEROCOPY_SOCKET", "/somewhere/else.sock", 1);
  REQUIRE(DefaultSocketPath() == "/somewhere/else.sock");
  REQUIRE(Client::Create()->socket() == "/somewhere/else.sock");
  ::unsetenv("ZEROCOPY_SOCKET");
  if (::geteuid() == 0) REQUIRE(DefaultSocketPath() == "/run/zerocopy/zerocopyd.sock");
  if (saved) ::setenv("ZEROCOPY_SOCKET", restore.c_str(), 1);
}

TEST_CASE("a model made only of empty tensors is published and mapped and verifies", "[client]") {
  // Size 0, tensors present (torch.empty(0), a zero-length dimension): what
  // the request fuzzer found (issue 19), on the C++ client's path.
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  ModelSource source;
  for (int i = 0; i < 2; ++i) source.manifest.add_storages()->set_size(0);
  auto* a = source.manifest.add_tensors();
  a->set_name("x");
  a->set_storage(0);
  a->set_dtype(v1::F32);
  a->add_shape(0);
  auto* b = source.manifest.add_tensors();
  b->set_name("grid");
  b->set_storage(1);
  b->set_dtype(v1::F16);
  b->add_shape(3);
  b->add_shape(0);
  b->add_shape(2);
  source.storage_data = {nullptr, nullptr};
  auto info = client->Publish(source);
  REQUIRE(info.ok());
  REQUIRE(info->size() == 0);
  REQUIRE(info->tensor_count() == 2);
  auto mapped = client->Map(info->digest());
  REQUIRE(mapped.ok());
  REQUIRE((*mapped)->size() == 0);
  REQUIRE((*mapped)->ComputeDigest() == info->digest());
  for (const char* name : {"x", "grid"}) {
    auto view = (*mapped)->Find(name);
    REQUIRE(view.ok());
    REQUIRE(view->extent == 0);
  }
  auto dl = (*mapped)->ToDLPack(1);
  REQUIRE(dl.ok());
  REQUIRE((*dl)->dl_tensor.ndim == 3);
  REQUIRE((*dl)->dl_tensor.shape[1] == 0);
  (*dl)->deleter(*dl);
}

TEST_CASE("a model mapped from its segment file at once gets its lease in the background", "[client]") {
  DaemonProcess d;
  d.Start();
  auto model = testing::MakeModel(3, 1024, 43);
  auto info = d.NewClient()->Publish(model.source);
  REQUIRE(info.ok());
  auto leases = [&] { return d.NewClient()->List()->models(0).leases(); };
  auto client = d.NewClient();

  SECTION("mapped, leased, then given back") {
    auto mapped = client->MapSegment(info->digest(), info->segment_path());
    REQUIRE(mapped.ok());
    CHECK((*mapped)->info().segment_path() == info->segment_path());
    CHECK((*mapped)->info().names_size() == 0);  // from the files: what they say, no names
    CHECK(std::memcmp((*mapped)->tensor(2).data, model.buffers[2].data(), 1024 * sizeof(float)) == 0);
    client->WaitForLeases();
    CHECK(leases() == 1);
    mapped = absl::CancelledError("dropped");
    testing::WaitUntil([&] { return leases() == 0; }, std::chrono::seconds(5));
    CHECK(leases() == 0);
  }
  SECTION("taken without waiting for the daemon: a stopped daemon does not hold it up") {
    // Through the daemon (the fallback whenever the files and the layout
    // this client expects disagree) the call would wait for an answer and
    // fail at its deadline.
    ClientOptions options;
    options.socket = d.socket();
    options.timeout = std::chrono::seconds(2);
    auto quick = Client::Create(options);
    REQUIRE(quick->List().ok());  // connected before the daemon stops
    REQUIRE(::kill(d.pid(), SIGSTOP) == 0);
    auto mapped = quick->MapSegment(info->digest(), info->segment_path());
    ::kill(d.pid(), SIGCONT);
    REQUIRE(mapped.ok());
    CHECK(std::memcmp((*mapped)->tensor(1).data, model.buffers[1].data(), 1024 * sizeof(float)) == 0);
    mapped = absl::CancelledError("dropped");
    quick->WaitForLeases();
    testing::WaitUntil([&] { return leases() == 0; }, std::chrono::seconds(5));
    CHECK(leases() == 0);
  }
  SECTION("dropped before its lease came: the lease is given back when it does") {
    {
      auto mapped = client->MapSegment(info->digest(), info->segment_path());
      REQUIRE(mapped.ok());
    }
    client->WaitForLeases();
    testing::WaitUntil([&] { return leases() == 0; }, std::chrono::seconds(5));
    CHECK(leases() == 0);
  }
  SECTION("files that are not provably the daemon's go through the daemon instead") {
    // A copy in a directory others may write: refused as a source, so the
    // mapping is the daemon's own file, leased at once.
    testing::TempDir dir;
    ::chmod(dir.path().c_str(), 0777);
    const std::string copy = dir.path() + "/" + info->digest() + ".seg";
    REQUIRE(testing::Run({"/bin/cp", info->segment_path(), copy}) == 0);
    REQUIRE(testing::Run({"/bin/cp", d.segment_dir() + "/" + info->digest() + ".manifest", dir.path()}) == 0);
    auto mapped = client->MapSegment(info->digest(), copy);
    REQUIRE(mapped.ok());
    CHECK((*mapped)->info().segment_path() == info->segment_path());
    CHECK(leases() == 1);
    // Another daemon's directory (here a live one; a dead one's left on the
    // tmpfs alike): its file is not this daemon's to lease, so this daemon
    // answers, and it has no such model.
    DaemonProcess second;
    second.Start();
    auto elsewhere = second.NewClient()->MapSegment(info->digest(), info->segment_path());
    CHECK(elsewhere.status().code() == absl::StatusCode::kNotFound);
    // A path that names another model's file, or nothing: the daemon too.
    auto other = client->MapSegment(info->digest(), d.segment_dir() + "/" + std::string(32, 'a') + ".seg");
    REQUIRE(other.ok());
    CHECK((*other)->info().segment_path() == info->segment_path());
  }
}

TEST_CASE("a client parses each model's manifest once: the daemon sends it as bytes to those who ask", "[client]") {
  DaemonProcess d;
  d.Start();
  auto model = testing::MakeModel(5, 4096, 71);
  model.source.manifest.set_metadata(std::string(10000, 'm'));  // as a pickled skeleton would be
  PublishOptions options;
  options.name = "m";
  auto info = d.NewClient()->Publish(model.source, options);
  REQUIRE(info.ok());
  auto client = d.NewClient();

  // The guard: a second GetModel, and every Map after it, reuse the manifest
  // parsed the first time (no parse, no allocation per tensor).
  auto first = client->Get("m");
  auto second = client->Get(info->digest());
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  CHECK(first->shared_manifest().get() == second->shared_manifest().get());
  CHECK(first->manifest().tensors_size() == 5);
  CHECK(first->manifest().metadata() == std::string(10000, 'm'));
  CHECK(first->model().digest() == info->digest());
  auto a = client->Map("m"), b = client->Map("m");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(&(*a)->manifest() == &first->manifest());
  CHECK(&(*b)->manifest() == &first->manifest());
  CHECK((*a)->ComputeDigest() == info->digest());
  // Another client parses its own.
  auto other = d.NewClient()->Get("m");
  REQUIRE(other.ok());
  CHECK(other->shared_manifest().get() != first->shared_manifest().get());
  CHECK(other->manifest().SerializeAsString() == first->manifest().SerializeAsString());

  // On the wire: a request that does not ask (an older client) gets the
  // manifest as a message; one that asks gets the same manifest serialized.
  auto stub = v1::ModelStore::NewStub(grpc::CreateChannel("unix:" + d.socket(), grpc::InsecureChannelCredentials()));
  v1::GetModelRequest request;
  request.mutable_model()->set_ref("m");
  v1::GetModelResponse as_message, as_bytes;
  {
    grpc::ClientContext ctx;
    REQUIRE(stub->GetModel(&ctx, request, &as_message).ok());
  }
  request.set_manifest_as_bytes(true);
  for (int i = 0; i < 2; ++i) {  // made by the first such request, kept after
    grpc::ClientContext ctx;
    as_bytes.Clear();
    REQUIRE(stub->GetModel(&ctx, request, &as_bytes).ok());
    CHECK_FALSE(as_bytes.has_manifest());
    v1::Manifest parsed;
    REQUIRE(parsed.ParseFromString(as_bytes.manifest_bytes()));
    CHECK(parsed.SerializeAsString() == as_message.manifest().SerializeAsString());
  }
  CHECK(as_message.manifest_bytes().empty());
  CHECK(as_message.manifest().tensors_size() == 5);
  CHECK(as_bytes.model().digest() == as_message.model().digest());
  CHECK_FALSE(as_bytes.manifest_omitted());

  // A caller that holds the manifest (a digest covers it) gets none.
  request.add_manifests_held(std::string(32, '0'));
  request.add_manifests_held(info->digest());
  {
    grpc::ClientContext ctx;
    v1::GetModelResponse omitted;
    REQUIRE(stub->GetModel(&ctx, request, &omitted).ok());
    CHECK(omitted.manifest_omitted());
    CHECK_FALSE(omitted.has_manifest());
    CHECK(omitted.manifest_bytes().empty());
    CHECK(omitted.model().digest() == info->digest());
  }
  // Refused precisely: more than 64, or any on a GPU request.
  for (int i = 0; i < 64; ++i) request.add_manifests_held(std::string(32, 'a'));
  {
    grpc::ClientContext ctx;
    v1::GetModelResponse refused;
    auto status = stub->GetModel(&ctx, request, &refused);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message().find("at most 64") != std::string::npos);
  }
  request.clear_manifests_held();
  request.add_manifests_held(info->digest());
  request.set_gpu_uuid("GPU-00000000-0000-0000-0000-000000000000");
  {
    grpc::ClientContext ctx;
    v1::GetModelResponse refused;
    auto status = stub->GetModel(&ctx, request, &refused);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message().find("not for GPU requests") != std::string::npos);
  }
  // A client that mapped the model from its sealed files holds that manifest:
  // its lease and later GetModels reuse it.
  auto fresh = d.NewClient();
  auto direct = fresh->MapSegment(info->digest(), info->segment_path());
  REQUIRE(direct.ok());
  fresh->WaitForLeases();
  auto after = fresh->Get("m");
  REQUIRE(after.ok());
  CHECK(&after->manifest() == &(*direct)->manifest());
  // `inspect --json` still shows the manifest as a message.
  CHECK(first->ToProto().manifest().SerializeAsString() == as_message.manifest().SerializeAsString());
}

}  // namespace
}  // namespace zerocopy
