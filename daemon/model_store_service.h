// ModelStoreService: the gRPC face of ModelRegistry (callback API). It
// converts statuses, counts and times requests (metrics.h), identifies the
// caller through PeerTable, and logs each error once, where it leaves the
// daemon.
//
// Thread safety: gRPC calls the handlers from many threads; all state is
// in ModelRegistry (locked) and atomics, but for the metrics endpoint's
// address (its own lock, never taken by a request but GetStats).
#pragma once

#include <chrono>
#include <string>

#include "absl/synchronization/mutex.h"
#include "memory_trimmer.h"
#include "metrics.h"
#include "model_registry.h"
#include "peer_table.h"
#include "work_queue.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy::daemon {

class ModelStoreService final : public v1::ModelStore::CallbackService {
 public:
  // worker_threads: the size of each of the two pools that run commits
  // and the GPU requests that upload (work_queue.h), apart from gRPC's own
  // threads.
  ModelStoreService(ModelRegistry* registry, const PeerTable* peers, unsigned worker_threads);

  // What GetStats reports of the metrics endpoint: the address it is
  // served on ("" when off), or why it is not although configured.
  void SetMetricsEndpoint(std::string address, std::string error);
  // Every metric (the endpoint's scrape and `zerocopy stats --prometheus`).
  std::vector<prometheus::MetricFamily> Collect();

  grpc::ServerUnaryReactor* CreateModel(grpc::CallbackServerContext* ctx, const v1::CreateModelRequest* req,
                                        v1::CreateModelResponse* resp) override;
  grpc::ServerUnaryReactor* CommitModel(grpc::CallbackServerContext* ctx, const v1::CommitModelRequest* req,
                                        v1::CommitModelResponse* resp) override;
  grpc::ServerUnaryReactor* AbortModel(grpc::CallbackServerContext* ctx, const v1::AbortModelRequest* req,
                                       v1::AbortModelResponse* resp) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx, const v1::GetModelRequest* req,
                                     v1::GetModelResponse* resp) override;
  grpc::ServerUnaryReactor* ReleaseModel(grpc::CallbackServerContext* ctx, const v1::ReleaseModelRequest* req,
                                         v1::ReleaseModelResponse* resp) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const v1::ListModelsRequest* req,
                                       v1::ListModelsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx, const v1::DeleteModelRequest* req,
                                        v1::DeleteModelResponse* resp) override;
  grpc::ServerUnaryReactor* TagModel(grpc::CallbackServerContext* ctx, const v1::TagModelRequest* req,
                                     v1::TagModelResponse* resp) override;
  grpc::ServerUnaryReactor* PinModel(grpc::CallbackServerContext* ctx, const v1::PinModelRequest* req,
                                     v1::PinModelResponse* resp) override;
  grpc::ServerUnaryReactor* UnpinModel(grpc::CallbackServerContext* ctx, const v1::PinModelRequest* req,
                                       v1::PinModelResponse* resp) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx, const v1::GetStatsRequest* req,
                                     v1::GetStatsResponse* resp) override;
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(grpc::CallbackServerContext* ctx) override;

 private:
  enum Method {
    kCreate,
    kCommit,
    kAbort,
    kGet,
    kRelease,
    kList,
    kDelete,
    kTag,
    kPin,
    kUnpin,
    kStats,
    kSession,
    kCount
  };
  static const char* MethodName(Method m);
  using Clock = std::chrono::steady_clock;
  // Counts and times the request (from `start`, its handler's entry), logs
  // a failure once with its context, finishes.
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, Method method, Clock::time_point start,
                                   const absl::Status& status, const std::string& context) {
    return Finish(ctx, ctx->DefaultReactor(), method, start, status, context);
  }
  // The same for a call answered later, from the pool: `reactor` is the
  // one its handler took (ctx->DefaultReactor() builds it anew each call).
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, grpc::ServerUnaryReactor* reactor, Method method,
                                   Clock::time_point start, const absl::Status& status, const std::string& context);
  // Runs `work` (returns the call's status, fills its response) on `pool`
  // and finishes the call from there; a call cancelled while it waited its
  // turn is answered CANCELLED without running it.
  template <typename Work>
  grpc::ServerUnaryReactor* Offload(WorkQueue& pool, grpc::CallbackServerContext* ctx, Method method,
                                    Clock::time_point start, std::string context, Work work);
  // The registry's figures with the requests' and the endpoint's.
  v1::GetStatsResponse FullStats();
  std::vector<prometheus::MetricFamily> Families(const v1::GetStatsResponse& stats) const;

  // GetModel's work, on gRPC's thread or (an upload) the pool: the leases
  // of a caller that went away meanwhile are returned, and it gets
  // CANCELLED. `peer`: the caller, as read when its call arrived.
  absl::Status Get(grpc::CallbackServerContext* ctx, const Peer& peer, const v1::GetModelRequest& req,
                   v1::GetModelResponse* resp, DevicePool::Mode mode);

  ModelRegistry* const registry_;
  const PeerTable* const peers_;
  RequestMetrics requests_;
  absl::Mutex endpoint_mu_;
  std::string metrics_address_ ABSL_GUARDED_BY(endpoint_mu_);
  std::string metrics_error_ ABSL_GUARDED_BY(endpoint_mu_);
  MemoryTrimmer trimmer_;  // after large manifests are freed
  // Last: their threads are joined first, while all the above still exist.
  // Apart, so that uploads never wait behind long commits.
  WorkQueue commits_;
  WorkQueue gpu_requests_;
};

}  // namespace zerocopy::daemon
