// Server: wires a running zerocopyd together. Locks and recovers the
// segment directory, binds the socket, serves ModelStore, health and
// reflection over connections it accepts itself (so that it knows each
// peer's SO_PEERCRED), and shuts down gracefully.
//
// Thread safety: Shutdown may be called from any thread, once.
#pragma once

#include <chrono>
#include <memory>
#include <thread>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "config.h"
#include "metrics_server.h"
#include "model_registry.h"
#include "model_store_service.h"
#include "unix_listener.h"

namespace zerocopy::daemon {

class Server {
 public:
  // Errors: FAILED_PRECONDITION (directory or socket in use by another
  // daemon), INVALID_ARGUMENT (config), INTERNAL / PERMISSION_DENIED.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Config& config);
  ~Server();

  // Stops accepting, cancels streams, waits up to `grace_seconds` for calls
  // in flight, then returns.
  void Shutdown(double grace_seconds);

 private:
  Server() = default;
  void AcceptLoop();
  // Serves metrics on `address` ("off": not), or logs why it cannot.
  void StartMetrics(const std::string& address);

  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<PeerTable> peers_;
  std::unique_ptr<ModelStoreService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<UnixListener> listener_;
  std::unique_ptr<MetricsServer> metrics_;  // after service_: stops scraping it before it goes
  std::thread accept_thread_;
  std::chrono::milliseconds handshake_timeout_{0};
  std::chrono::steady_clock::time_point last_refusal_log_;  // accept thread only
  bool shut_down_ = false;
};

// Resolves a group name (or numeric gid) to a gid; "" gives -1 (keep).
absl::StatusOr<gid_t> ResolveGroup(const std::string& group);

}  // namespace zerocopy::daemon
