#include "model_store_service.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <unistd.h>

#include <iterator>

#include "absl/strings/str_cat.h"
#include "log.h"
#include "zerocopy/grpc_status.h"

namespace zerocopy::daemon {

const char* ModelStoreService::MethodName(Method m) {
  static const char* kNames[] = {"CreateModel", "CommitModel", "AbortModel", "GetModel",   "ReleaseModel", "ListModels",
                                 "DeleteModel", "TagModel",    "PinModel",   "UnpinModel", "GetStats",     "Session"};
  return kNames[m];
}

namespace {

std::vector<std::string> MethodNames(int count, const char* (*name)(int)) {
  std::vector<std::string> names;
  for (int m = 0; m < count; ++m) names.emplace_back(name(m));
  return names;
}

}  // namespace

ModelStoreService::ModelStoreService(ModelRegistry* registry, const PeerTable* peers, unsigned worker_threads)
    : registry_(registry),
      peers_(peers),
      requests_(MethodNames(kCount, [](int m) { return MethodName(static_cast<Method>(m)); })),
      commits_(worker_threads),
      gpu_requests_(worker_threads) {}

grpc::ServerUnaryReactor* ModelStoreService::Finish(grpc::CallbackServerContext* ctx, grpc::ServerUnaryReactor* reactor,
                                                    Method method, Clock::time_point start, const absl::Status& status,
                                                    const std::string& context) {
  requests_.Record(method, status.code(), Clock::now() - start);
  // A transfer's claim refused because another process holds it (or the
  // model is here) is how waiters wait: neither an error nor news.
  const bool waiting = method == kCreate && absl::IsAlreadyExists(status);
  if (!status.ok()) {
    Peer peer = peers_->Lookup(ctx->peer());
    auto level = absl::IsNotFound(status) || waiting ? spdlog::level::debug : spdlog::level::warn;
    Log().log(level, "method={} pid={} uid={} {} code={} error=\"{}\"", MethodName(method), peer.pid, peer.uid, context,
              absl::StatusCodeToString(status.code()), std::string(status.message()));
  }
  reactor->Finish(ToGrpcStatus(status));  // last: then gRPC may end the call and free ctx
  return reactor;
}

#define ZC_UNARY(method_enum, call, context)          \
  const auto start = Clock::now();                    \
  auto result = (call);                               \
  if (result.ok()) *resp = std::move(result).value(); \
  return Finish(ctx, method_enum, start, result.status(), (context))

grpc::ServerUnaryReactor* ModelStoreService::CreateModel(grpc::CallbackServerContext* ctx,
                                                         const v1::CreateModelRequest* req,
                                                         v1::CreateModelResponse* resp) {
  // Parsing a large manifest left millions of small blocks behind, freed
  // when the call is done (or the model committed, aborted or dropped):
  // give them back whatever became of it.
  constexpr int kLargeManifestTensors = 4096;
  if (req->manifest().tensors_size() >= kLargeManifestTensors) trimmer_.Request();
  ZC_UNARY(kCreate, registry_->Create(*req, peers_->Lookup(ctx->peer())),
           absl::StrCat("name=", req->name(), " tensors=", req->manifest().tensors_size()));
}

template <typename Work>
grpc::ServerUnaryReactor* ModelStoreService::Offload(WorkQueue& pool, grpc::CallbackServerContext* ctx, Method method,
                                                     Clock::time_point start, std::string context, Work work) {
  auto* reactor = ctx->DefaultReactor();
  pool.Run([this, ctx, reactor, method, start, context = std::move(context), work = std::move(work)] {
    // A caller that is gone (or a daemon stopping) gets no commit, lease
    // or device copy.
    absl::Status status = ctx->IsCancelled() ? absl::CancelledError("cancelled before it started") : work();
    Finish(ctx, reactor, method, start, status, context);
  });
  return reactor;
}

grpc::ServerUnaryReactor* ModelStoreService::CommitModel(grpc::CallbackServerContext* ctx,
                                                         const v1::CommitModelRequest* req,
                                                         v1::CommitModelResponse* resp) {
  // Hashes the whole segment: on the pool, never on gRPC's threads.
  const auto start = Clock::now();
  // Who asked, read now while the call is live: its connection's
  // descriptor may be closed and given to another process's connection
  // while the commit waits in the pool.
  Peer peer = peers_->Lookup(ctx->peer());
  return Offload(commits_, ctx, kCommit, start, absl::StrCat("staging=", req->staging_id()), [this, peer, req, resp] {
    auto result = registry_->Commit(*req, peer);
    if (result.ok()) {
      *resp = std::move(result).value();
      const v1::Origin& origin = req->origin();
      Log().info("committed digest={} size={} names={} dedup={} origin={} source=\"{}\" duration_ms={}",
                 resp->model().digest(), resp->model().size(), resp->model().names_size(), resp->deduplicated(),
                 origin.kind().empty() ? "-" : origin.kind(), origin.source(), origin.duration_ms());
    }
    return result.status();
  });
}

grpc::ServerUnaryReactor* ModelStoreService::AbortModel(grpc::CallbackServerContext* ctx,
                                                        const v1::AbortModelRequest* req, v1::AbortModelResponse*) {
  const auto start = Clock::now();
  trimmer_.Request();  // its manifest may have been a large one
  return Finish(ctx, kAbort, start, registry_->Abort(*req, peers_->Lookup(ctx->peer())),
                absl::StrCat("staging=", req->staging_id()));
}

grpc::ServerUnaryReactor* ModelStoreService::GetModel(grpc::CallbackServerContext* ctx, const v1::GetModelRequest* req,
                                                      v1::GetModelResponse* resp) {
  const auto start = Clock::now();
  std::string context = absl::StrCat("ref=", req->model().ref());
  // Who asked, read now while the call is live (see CommitModel).
  Peer peer = peers_->Lookup(ctx->peer());
  if (req->gpu_uuid().empty()) {
    return Finish(ctx, kGet, start, Get(ctx, peer, *req, resp, DevicePool::Mode::kMayUpload), context);
  }
  absl::StrAppend(&context, " gpu=", req->gpu_uuid());
  // Answered here unless it must upload (or wait for an upload): a GPU
  // request whose copy is made (every one per model and GPU but the
  // first), and every refusal, never wait behind uploads.
  absl::Status status = Get(ctx, peer, *req, resp, DevicePool::Mode::kLeaseOnly);
  if (!DevicePool::IsWouldUpload(status)) return Finish(ctx, kGet, start, status, context);
  // An upload, which may take seconds: on the pool, never on gRPC's threads.
  return Offload(gpu_requests_, ctx, kGet, start, std::move(context),
                 [this, ctx, peer, req, resp] { return Get(ctx, peer, *req, resp, DevicePool::Mode::kMayUpload); });
}

absl::Status ModelStoreService::Get(grpc::CallbackServerContext* ctx, const Peer& peer, const v1::GetModelRequest& req,
                                    v1::GetModelResponse* resp, DevicePool::Mode mode) {
  auto leased = registry_->Get(req, peer, mode);
  if (!leased.ok()) return leased.status();
  if ((leased->host || leased->device) && ctx->IsCancelled()) {
    // The caller gave up (its deadline passed while the device copy was
    // made, or it exited) and will never release leases it does not know
    // of: they go back now (with `leased`), not at its session's end,
    // which for a live process may be hours away.
    return absl::CancelledError("the caller went away while the model was fetched; its leases are returned");
  }
  leased->host.HandOver();
  leased->device.HandOver();
  *resp = std::move(leased->response);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ModelStoreService::ReleaseModel(grpc::CallbackServerContext* ctx,
                                                          const v1::ReleaseModelRequest* req,
                                                          v1::ReleaseModelResponse*) {
  const auto start = Clock::now();
  return Finish(ctx, kRelease, start, registry_->Release(*req, peers_->Lookup(ctx->peer())),
                absl::StrCat("digest=", req->digest()));
}

grpc::ServerUnaryReactor* ModelStoreService::ListModels(grpc::CallbackServerContext* ctx, const v1::ListModelsRequest*,
                                                        v1::ListModelsResponse* resp) {
  const auto start = Clock::now();
  *resp = registry_->List();
  return Finish(ctx, kList, start, absl::OkStatus(), "");
}

grpc::ServerUnaryReactor* ModelStoreService::DeleteModel(grpc::CallbackServerContext* ctx,
                                                         const v1::DeleteModelRequest* req,
                                                         v1::DeleteModelResponse* resp) {
  const auto start = Clock::now();
  auto result = registry_->Delete(*req, peers_->Lookup(ctx->peer()));
  if (result.ok()) {
    *resp = std::move(result).value();
    Log().info("deleted digest={} ref={}", resp->digest(), req->model().ref());
  }
  return Finish(ctx, kDelete, start, result.status(), absl::StrCat("ref=", req->model().ref()));
}

grpc::ServerUnaryReactor* ModelStoreService::TagModel(grpc::CallbackServerContext* ctx, const v1::TagModelRequest* req,
                                                      v1::TagModelResponse* resp) {
  ZC_UNARY(kTag, registry_->Tag(*req, peers_->Lookup(ctx->peer())),
           absl::StrCat("name=", req->name(), " ref=", req->model().ref()));
}

grpc::ServerUnaryReactor* ModelStoreService::PinModel(grpc::CallbackServerContext* ctx, const v1::PinModelRequest* req,
                                                      v1::PinModelResponse* resp) {
  ZC_UNARY(kPin, registry_->SetPinned(*req, true, peers_->Lookup(ctx->peer())),
           absl::StrCat("ref=", req->model().ref()));
}

grpc::ServerUnaryReactor* ModelStoreService::UnpinModel(grpc::CallbackServerContext* ctx,
                                                        const v1::PinModelRequest* req, v1::PinModelResponse* resp) {
  ZC_UNARY(kUnpin, registry_->SetPinned(*req, false, peers_->Lookup(ctx->peer())),
           absl::StrCat("ref=", req->model().ref()));
}

void ModelStoreService::SetMetricsEndpoint(std::string address, std::string error) {
  absl::MutexLock lock(&endpoint_mu_);
  metrics_address_ = std::move(address);
  metrics_error_ = std::move(error);
}

v1::GetStatsResponse ModelStoreService::FullStats() {
  v1::GetStatsResponse stats = registry_->Stats();
  uint64_t errors = 0;
  for (int m = 0; m < kCount; ++m) {
    (*stats.mutable_requests())[MethodName(static_cast<Method>(m))] = requests_.Requests(m);
    // Each code read once (they move meanwhile): every one but OK, and but
    // a transfer's waiters (Finish).
    for (int c = 1; c <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++c) {
      const auto code = static_cast<absl::StatusCode>(c);
      if (!(m == kCreate && code == absl::StatusCode::kAlreadyExists)) errors += requests_.Count(m, code);
    }
  }
  stats.set_errors(errors);
  stats.set_version(ZEROCOPY_VERSION);
  absl::MutexLock lock(&endpoint_mu_);
  stats.set_metrics_address(metrics_address_);
  stats.set_metrics_error(metrics_error_);
  return stats;
}

std::vector<prometheus::MetricFamily> ModelStoreService::Families(const v1::GetStatsResponse& stats) const {
  std::vector<prometheus::MetricFamily> families = StatsFamilies(stats);
  requests_.AppendFamilies(&families);
  return families;
}

std::vector<prometheus::MetricFamily> ModelStoreService::Collect() { return Families(FullStats()); }

grpc::ServerUnaryReactor* ModelStoreService::GetStats(grpc::CallbackServerContext* ctx, const v1::GetStatsRequest* req,
                                                      v1::GetStatsResponse* resp) {
  const auto start = Clock::now();
  *resp = FullStats();
  (*resp->mutable_requests())["GetStats"] += 1;  // this one
  if (req->prometheus()) resp->set_prometheus_text(ExpositionText(Families(*resp)));
  return Finish(ctx, kStats, start, absl::OkStatus(), "");
}

namespace {

// One per client process: Hello -> session id, then the stream stays open;
// when it ends (the process exited, died, or closed it) the session's
// leases are released.
class SessionReactor final : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionReactor(ModelRegistry* registry, Peer peer) : registry_(registry), peer_(peer) { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side or went away
      Finish(grpc::Status::OK);
      return;
    }
    if (!request_.has_hello() || session_id_ != 0) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a session takes exactly one Hello, first"));
      return;
    }
    session_id_ = registry_->OpenSession(peer_);
    Log().debug("session={} opened pid={} uid={}", session_id_, peer_.pid, peer_.uid);
    response_.set_session_id(session_id_);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override {
    if (session_id_ != 0) {
      registry_->CloseSession(session_id_);
      Log().debug("session={} closed pid={}", session_id_, peer_.pid);
    }
    delete this;
  }

 private:
  ModelRegistry* const registry_;
  const Peer peer_;
  uint64_t session_id_ = 0;
  v1::SessionRequest request_;
  v1::SessionResponse response_;
};

}  // namespace

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* ModelStoreService::Session(
    grpc::CallbackServerContext* ctx) {
  requests_.Add(kSession, absl::StatusCode::kOk);
  return new SessionReactor(registry_, peers_->Lookup(ctx->peer()));
}

}  // namespace zerocopy::daemon
