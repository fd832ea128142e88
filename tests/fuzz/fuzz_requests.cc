// libFuzzer: every request handler of the daemon's registry fed arbitrary
// protobuf bytes, against one long-lived registry (a real segment
// directory in /dev/shm, a small budget, fake GPUs), as the gRPC service
// would call it. The first byte picks the handler and the session; the
// rest is the request. Nothing may crash, and the registry's accounting
// must stay consistent.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "device_pool.h"
#include "log.h"
#include "model_registry.h"
#include "segment_store.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"
#include "spdlog/sinks/null_sink.h"

namespace zd = zerocopy::daemon;
namespace v1 = zerocopy::v1;

namespace {

struct Fixture {
  std::string dir;
  std::unique_ptr<zd::ModelRegistry> registry;
  zd::Peer peer;
  uint64_t sessions[2] = {0, 0};
  uint64_t budget = 4 << 20;

  Fixture() {
    auto logger = std::make_shared<spdlog::logger>("zerocopyd", std::make_shared<spdlog::sinks::null_sink_mt>());
    spdlog::register_logger(logger);
    char tmpl[] = "/dev/shm/zc-fuzz-XXXXXX";
    dir = ::mkdtemp(tmpl);
    auto store = zd::SegmentStore::Open(dir + "/segments", static_cast<gid_t>(-1));
    if (!store.ok()) std::abort();
    zd::RegistryOptions options;
    options.host_budget = budget;
    options.hash_threads = 1;
    // The request-cost limits, small enough that inputs reach them.
    options.max_tensors = 64;
    options.staging.per_uid = 4;
    options.staging.bytes_per_uid = budget / 2;
    auto devices = std::make_unique<zd::DevicePool>(
        zd::MakeFakeBackend({"GPU-00000000-0000-0000-0000-000000000000"}, 8 << 20, dir + "/gpu"),
        zd::DevicePoolOptions{});
    registry = std::make_unique<zd::ModelRegistry>(std::move(*store), options, std::move(devices));
    peer = zd::Peer{::getpid(), ::getuid(), ::getgid(), true};
    sessions[0] = registry->OpenSession(peer);
    sessions[1] = registry->OpenSession(peer);
    std::atexit([] { std::system("rm -rf /dev/shm/zc-fuzz-*"); });
  }
};

template <typename Request>
bool Parse(const uint8_t* data, size_t size, Request* r) {
  return r->ParseFromArray(data, static_cast<int>(size));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* f = new Fixture();
  static google::protobuf::LogSilencer quiet;  // invalid UTF-8 in string fields is logged, then refused
  if (size < 1) return 0;
  const uint8_t op = data[0];
  const uint64_t session = f->sessions[(op >> 7) & 1];
  data += 1;
  size -= 1;
  auto& r = *f->registry;
  switch (op % 11) {
    case 0: {
      v1::CreateModelRequest req;
      if (!Parse(data, size, &req)) break;
      auto created = r.Create(req, f->peer);
      if (created.ok()) {
        // The staging file holds zeros: commit it with their digest (a
        // model others can then get, lease, tag, pin and delete), or with
        // a wrong one (dropped), or abort.
        v1::CommitModelRequest commit;
        commit.set_staging_id(created->staging_id());
        if (size % 3 == 0) {
          commit.set_digest(req.name());
        } else {
          std::vector<uint8_t> zeros(created->manifest().total_size());
          commit.set_digest(zerocopy::ComputeDigest(zeros.data(), zeros.size(), created->manifest(), 1));
        }
        if (size % 4 != 1) {
          (void)r.Commit(commit, f->peer);
        } else {
          v1::AbortModelRequest abort;
          abort.set_staging_id(created->staging_id());
          (void)r.Abort(abort, f->peer);
        }
      }
      break;
    }
    case 1: {
      v1::CommitModelRequest req;
      if (Parse(data, size, &req)) (void)r.Commit(req, f->peer);
      break;
    }
    case 2: {
      v1::AbortModelRequest req;
      if (Parse(data, size, &req)) (void)r.Abort(req, f->peer);
      break;
    }
    case 3: {
      v1::GetModelRequest req;
      if (!Parse(data, size, &req)) break;
      if (req.session_id() % 3 != 0) req.set_session_id(session);  // mostly a live session
      auto leased = r.Get(req, f->peer);
      if (leased.ok()) {  // as the service does once the answer is sent
        leased->host.HandOver();
        leased->device.HandOver();
      }
      break;
    }
    case 4: {
      v1::ReleaseModelRequest req;
      if (!Parse(data, size, &req)) break;
      if (req.session_id() % 3 != 0) req.set_session_id(session);
      (void)r.Release(req, f->peer);
      break;
    }
    case 5: {
      v1::DeleteModelRequest req;
      if (Parse(data, size, &req)) (void)r.Delete(req, f->peer);
      break;
    }
    case 6: {
      v1::TagModelRequest req;
      if (Parse(data, size, &req)) (void)r.Tag(req, f->peer);
      break;
    }
    case 7:
    case 8: {
      v1::PinModelRequest req;
      if (Parse(data, size, &req)) (void)r.SetPinned(req, op % 11 == 7, f->peer);
      break;
    }
    case 9: {
      // Session churn: the chosen session ends (its leases with it) and a new one takes its place.
      r.CloseSession(session);
      f->sessions[(op >> 7) & 1] = r.OpenSession(f->peer);
      break;
    }
    default: (void)r.List(); break;
  }
  auto stats = r.Stats();
  if (stats.bytes_used() > f->budget || stats.bytes_staging() != 0) __builtin_trap();
  // The bytes in use are exactly the committed models' sizes; a model of
  // size 0 is one whose tensors are all empty (torch.empty(0), a
  // zero-length dimension: valid, and published and loaded like any other),
  // so none of its tensors may reach a byte.
  const auto list = r.List();
  uint64_t committed = 0;
  for (const auto& m : list.models()) {
    committed += m.size();
    if (m.size() != 0) continue;
    v1::GetModelRequest get;
    get.mutable_model()->set_ref(m.digest());
    auto got = r.Get(get, f->peer);
    if (!got.ok()) __builtin_trap();
    for (const auto& t : got->response.manifest().tensors()) {
      auto extent = zerocopy::TensorExtent(t);
      if (!extent.ok() || *extent != 0) __builtin_trap();
    }
  }
  if (committed != stats.bytes_used()) __builtin_trap();
  return 0;
}
