#include "metrics_server.h"

#include <netdb.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <exception>

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy::daemon {

namespace {

class FunctionCollectable final : public prometheus::Collectable {
 public:
  explicit FunctionCollectable(MetricsServer::Collect collect) : collect_(std::move(collect)) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return collect_(); }

 private:
  const MetricsServer::Collect collect_;
};

// Why `address` cannot be listened on, found by trying it: civetweb's
// exception says only that it has no context.
std::string BindError(const std::string& address) {
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (colon == std::string::npos || ::getaddrinfo(host.c_str(), address.c_str() + colon + 1, &hints, &found) != 0) {
    return "not an address";
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> keep(found, &::freeaddrinfo);
  UniqueFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::strerror(errno);
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as civetweb does
  if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0) return std::strerror(errno);
  return "civetweb could not start";
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& address, Collect collect) {
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  auto collectable = std::make_shared<FunctionCollectable>(std::move(collect));
  try {
    // A client that opens a connection and sends nothing holds one of the
    // two threads for at most request_timeout_ms.
    server->exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", address, "num_threads", "2", "request_timeout_ms", "10000"});
  } catch (const std::exception&) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", BindError(address)));
  }
  server->exposer_->RegisterCollectable(collectable);
  server->collectable_ = std::move(collectable);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  const size_t colon = address.rfind(':');
  server->address_ = ports.empty() ? address : absl::StrCat(address.substr(0, colon), ":", ports.front());
  return server;
}

MetricsServer::~MetricsServer() = default;

}  // namespace zerocopy::daemon
