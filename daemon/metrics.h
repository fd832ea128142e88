// The daemon's Prometheus metrics: what each request costs (RequestMetrics,
// counted where the call is answered) and the registry's state, turned
// into metric families at scrape time from the same GetStatsResponse that
// `zerocopy stats` shows (StatsFamilies), so the two never disagree.
// daemon/README.md lists every metric.
//
// Thread safety: RequestMetrics is atomics only (no lock on the request
// path: prometheus-cpp's Histogram takes a mutex per Observe, so the
// latency histograms are ours); the functions are pure.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/metric_family.h>

#include "absl/status/status.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

// Durations into fixed buckets, each an atomic count; cumulated when read.
class LatencyHistogram {
 public:
  // Upper bounds in seconds: 25 µs (a GetModel is ~100 µs) to 60 s (the
  // commit of a large model hashes every byte).
  static constexpr std::array<double, 19> kBounds = {
      25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60};
  void Observe(std::chrono::nanoseconds elapsed);
  prometheus::ClientMetric::Histogram Read() const;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> counts_{};  // the last: above every bound
  std::atomic<uint64_t> sum_ns_{0};
};

// Requests by method and status code, and their latency by method.
class RequestMetrics {
 public:
  explicit RequestMetrics(std::vector<std::string> methods);

  // One answered call of `method` (an index into the constructor's list).
  void Record(size_t method, absl::StatusCode code, std::chrono::nanoseconds elapsed);
  // One call counted without a duration (a Session stream: it lasts as
  // long as its process).
  void Add(size_t method, absl::StatusCode code);

  uint64_t Requests(size_t method) const;
  uint64_t Count(size_t method, absl::StatusCode code) const;
  const std::string& name(size_t method) const { return methods_[method]; }
  size_t size() const { return methods_.size(); }

  // zerocopy_requests_total{method,code} (codes seen only) and
  // zerocopy_request_duration_seconds{method}.
  void AppendFamilies(std::vector<prometheus::MetricFamily>* families) const;

 private:
  static constexpr size_t kCodes = 17;  // absl::StatusCode 0 (OK) to 16 (UNAUTHENTICATED)
  struct Method {
    std::array<std::atomic<uint64_t>, kCodes> codes{};
    LatencyHistogram latency;
  };
  const std::vector<std::string> methods_;
  const std::unique_ptr<Method[]> slots_;
};

// The registry's figures as metric families: bytes, budget, models, pins,
// sessions and leases, evictions, pulls, publishes by origin, per-GPU
// copies and uploads.
std::vector<prometheus::MetricFamily> StatsFamilies(const v1::GetStatsResponse& stats);

// The text exposition format (version 0.0.4), as the endpoint serves it.
std::string ExpositionText(const std::vector<prometheus::MetricFamily>& families);

}  // namespace zerocopy::daemon
