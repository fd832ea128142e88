// MetricsServer: the HTTP endpoint Prometheus scrapes (GET /metrics), over
// prometheus-cpp's Exposer (civetweb, two threads of its own). It serves
// what `collect` returns at each scrape and nothing else: no files, no
// other paths, no authentication (loopback by default: config/zerocopyd.toml).
//
// Thread safety: `collect` is called from civetweb's threads, one scrape
// at a time or several at once; it must outlive the server.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/metric_family.h>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
}

namespace zerocopy::daemon {

class MetricsServer {
 public:
  using Collect = std::function<std::vector<prometheus::MetricFamily>()>;

  // Listens on `address` ("HOST:PORT", checked by CheckMetricsAddress; port
  // 0 takes any free one). Errors: UNAVAILABLE (cannot listen there: the
  // port is taken, the address is not this machine's, not permitted).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address, Collect collect);
  ~MetricsServer();  // stops listening; returns once no scrape is running

  // As bound: "127.0.0.1:9479" (the port filled in when 0 was asked).
  const std::string& address() const { return address_; }

 private:
  MetricsServer() = default;
  std::shared_ptr<void> collectable_;  // held here: the Exposer keeps only a weak_ptr
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

}  // namespace zerocopy::daemon
