#include "server.h"

#include <sys/resource.h>

#include <grp.h>

#include <chrono>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_posix.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "log.h"
#include "zerocopy/status.h"

namespace zerocopy::daemon {

absl::StatusOr<gid_t> ResolveGroup(const std::string& group) {
  if (group.empty()) return static_cast<gid_t>(-1);
  uint32_t numeric;
  if (absl::SimpleAtoi(group, &numeric)) return static_cast<gid_t>(numeric);
  struct group* g = ::getgrnam(group.c_str());
  if (g == nullptr) return absl::InvalidArgumentError(absl::StrCat("group '", group, "' does not exist"));
  return g->gr_gid;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Config& config) {
  auto& log = Log();
  ZC_ASSIGN_OR_RETURN(gid_t segment_gid, ResolveGroup(config.segment_group));
  ZC_ASSIGN_OR_RETURN(gid_t socket_gid, ResolveGroup(config.socket_group));
  if (config.host_budget == 0) return absl::InvalidArgumentError("host_budget must be positive");

  std::unique_ptr<Server> server(new Server());
  ZC_ASSIGN_OR_RETURN(auto store, SegmentStore::Open(config.segment_dir, segment_gid));
  SegmentStore* const segments = store.get();  // the registry owns it
  auto t0 = std::chrono::steady_clock::now();
  SegmentStore::RecoveryReport report = store->Recover(config.verify_on_start, config.hash_threads);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  log.info("recovered models={} staging_removed={} orphans_removed={} quarantined={} verify={} ms={:.1f}",
           report.models.size(), report.staging_removed, report.orphans_removed, report.quarantined.size(),
           config.verify_on_start, ms);
  for (const auto& q : report.quarantined) log.warn("quarantined {}", q);

  RegistryOptions options;
  options.host_budget = config.host_budget;
  options.tmpfs_reserve = config.tmpfs_reserve;
  options.hash_threads = config.hash_threads;
  options.admin_uids = config.admin_uids;
  options.admin_gids = config.admin_gids;
  options.max_tensors = config.max_tensors;
  options.staging.per_uid = config.max_staging_per_uid;
  options.staging.bytes_per_uid =
      config.max_staging_bytes_per_uid != 0 ? config.max_staging_bytes_per_uid : config.host_budget;
  options.staging.manifest_bytes_per_uid = config.max_staging_manifest_bytes_per_uid;
  options.staging_idle_ms = static_cast<int64_t>(config.staging_idle_seconds * 1000);
  std::unique_ptr<DeviceBackend> backend;
  if (config.gpu_backend == "off") {
    backend = MakeOffBackend();
  } else if (config.gpu_backend == "fake") {
    std::string dir = config.fake_gpu_dir.empty() ? config.segment_dir + ".fake-gpu" : config.fake_gpu_dir;
    backend = MakeFakeBackend(config.fake_gpus, config.fake_gpu_memory, dir);
  } else {
    backend = MakeCudaBackend();  // built without CUDA: answers UNIMPLEMENTED
  }
  DevicePoolOptions device_options;
  device_options.budget_bytes = config.gpu_budget_bytes;
  device_options.budget_fraction = config.gpu_budget_fraction;
  log.info("gpu_backend={}", backend->name());
  server->registry_ = std::make_unique<ModelRegistry>(std::move(store), options,
                                                      std::make_unique<DevicePool>(std::move(backend), device_options));
  server->registry_->Adopt(report);
  // Descriptors: every connection and every open segment file is one. The
  // connections get all but a reserve of the daemon's limit.
  PeerTable::Limits limits;
  limits.per_uid = config.max_connections_per_uid;
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    limits.total =
        static_cast<uint32_t>(std::min<rlim_t>(nofile.rlim_cur > 256 ? nofile.rlim_cur - 256 : 16, UINT32_MAX));
  }
  server->peers_ = std::make_unique<PeerTable>(limits);
  server->service_ =
      std::make_unique<ModelStoreService>(server->registry_.get(), server->peers_.get(), config.worker_threads);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.RegisterService(server->service_.get());
  int max_message = static_cast<int>(std::min<uint64_t>(config.max_message_bytes, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  // A connection with no call for this long is sent GOAWAY and closed; a
  // client reconnects by itself at its next call. Holding a lease keeps a
  // session stream open, so no process holding a model is ever idle.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             static_cast<int>(std::min<double>(config.connection_idle_seconds * 1000, INT32_MAX)));
  server->grpc_server_ = builder.BuildAndStart();
  if (!server->grpc_server_) return absl::InternalError("gRPC server failed to start");
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);

  ZC_ASSIGN_OR_RETURN(server->listener_, UnixListener::Bind(config.socket, config.socket_mode, socket_gid));
  ZC_RETURN_IF_ERROR(segments->RecordServing(server->listener_->inode()));
  // Once nothing can stop the start: a daemon refused (its socket in
  // use) never touches the metrics port of the one it met.
  server->StartMetrics(config.metrics_address);
  server->handshake_timeout_ = std::chrono::milliseconds(static_cast<int64_t>(config.handshake_timeout_seconds * 1000));
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

void Server::StartMetrics(const std::string& address) {
  if (address == "off") {
    Log().info("metrics off");
    return;
  }
  // Weight sharing never goes down for metrics: a port that is taken is
  // an error logged (and shown by GetStats), and the daemon serves on.
  auto metrics = MetricsServer::Start(address, [service = service_.get()] { return service->Collect(); });
  if (!metrics.ok()) {
    Log().error("metrics not served: {}", std::string(metrics.status().message()));
    service_->SetMetricsEndpoint("", std::string(metrics.status().message()));
    return;
  }
  metrics_ = *std::move(metrics);
  Log().info("metrics address={} path=/metrics", metrics_->address());
  service_->SetMetricsEndpoint(metrics_->address(), "");
}

void Server::AcceptLoop() {
  auto admit = [this](int fd) {
    absl::Status admitted = peers_->Admit(fd);
    if (admitted.ok()) return true;
    // Closed at once by the listener; logged at most once a second.
    const auto now = std::chrono::steady_clock::now();
    if (now - last_refusal_log_ > std::chrono::seconds(1)) {
      Log().warn("connection refused: {}", std::string(admitted.message()));
      last_refusal_log_ = now;
    }
    return false;
  };
  for (;;) {
    auto fd = listener_->Accept(admit, handshake_timeout_);
    if (!fd.ok()) {
      if (!absl::IsCancelled(fd.status())) Log().error("accept failed, no new connections: {}", fd.status().ToString());
      return;
    }
    grpc::AddInsecureChannelFromFd(grpc_server_.get(), fd->release());
  }
}

void Server::Shutdown(double grace_seconds) {
  if (shut_down_) return;
  shut_down_ = true;
  metrics_.reset();
  // Start() may have failed part way: stop only what was started.
  if (listener_) listener_->Stop();
  if (accept_thread_.joinable()) accept_thread_.join();
  if (grpc_server_) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(false);
    auto deadline =
        std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000));
    grpc_server_->Shutdown(deadline);
    grpc_server_->Wait();
  }
  listener_.reset();  // removes the socket file
}

Server::~Server() { Shutdown(0); }

}  // namespace zerocopy::daemon
