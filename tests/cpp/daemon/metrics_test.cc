// The daemon's metrics: latency buckets, request counts by method and
// code from many threads at once, and GetStats' figures in the text
// exposition format (tests/python/test_metrics.py scrapes the real
// endpoint).
#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "metrics.h"

namespace zerocopy::daemon {
namespace {

using namespace std::chrono_literals;

TEST_CASE("latency histograms count each duration in its bucket, cumulated when read", "[metrics]") {
  LatencyHistogram h;
  h.Observe(10us);   // <= 25 µs
  h.Observe(25us);   // on a bound: that bucket (le is inclusive)
  h.Observe(120us);  // <= 250 µs
  h.Observe(2min);   // above every bound: +Inf only
  h.Observe(-5us);   // a clock that went back counts as 0
  auto read = h.Read();
  REQUIRE(read.sample_count == 5);
  REQUIRE(read.sample_sum == Approx(120.000155).epsilon(1e-9));
  REQUIRE(read.bucket.size() == LatencyHistogram::kBounds.size() + 1);
  REQUIRE(read.bucket[0].upper_bound == 25e-6);
  REQUIRE(read.bucket[0].cumulative_count == 3);
  REQUIRE(read.bucket[2].upper_bound == 100e-6);
  REQUIRE(read.bucket[2].cumulative_count == 3);
  REQUIRE(read.bucket[3].cumulative_count == 4);
  REQUIRE(read.bucket[LatencyHistogram::kBounds.size() - 1].cumulative_count == 4);  // le=60
  REQUIRE(std::isinf(read.bucket.back().upper_bound));
  REQUIRE(read.bucket.back().cumulative_count == 5);
}

TEST_CASE("requests are counted by method and code from many threads without a lock", "[metrics]") {
  RequestMetrics metrics({"GetModel", "DeleteModel"});
  constexpr int kThreads = 8, kEach = 10000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        metrics.Record(0, i % 10 == 0 ? absl::StatusCode::kNotFound : absl::StatusCode::kOk, 100us);
        if (t == 0 && i < 3) metrics.Add(1, absl::StatusCode::kFailedPrecondition);
      }
    });
  }
  std::vector<prometheus::MetricFamily> during;
  metrics.AppendFamilies(&during);  // a scrape while they count
  for (auto& t : threads) t.join();
  REQUIRE(metrics.Requests(0) == kThreads * kEach);
  REQUIRE(metrics.Count(0, absl::StatusCode::kNotFound) == kThreads * kEach / 10);
  REQUIRE(metrics.Count(1, absl::StatusCode::kFailedPrecondition) == 3);
  REQUIRE(metrics.Count(1, absl::StatusCode::kOk) == 0);

  std::vector<prometheus::MetricFamily> families;
  metrics.AppendFamilies(&families);
  const std::string text = ExpositionText(families);
  REQUIRE_THAT(text, Catch::Contains("# TYPE zerocopy_requests_total counter\n"));
  REQUIRE_THAT(text, Catch::Contains("zerocopy_requests_total{code=\"OK\",method=\"GetModel\"} 72000\n"));
  REQUIRE_THAT(text, Catch::Contains("zerocopy_requests_total{code=\"NOT_FOUND\",method=\"GetModel\"} 8000\n"));
  // OK always (a series from 0), other codes once seen.
  REQUIRE_THAT(text, Catch::Contains("zerocopy_requests_total{code=\"OK\",method=\"DeleteModel\"} 0\n"));
  REQUIRE_THAT(text,
               Catch::Contains("zerocopy_requests_total{code=\"FAILED_PRECONDITION\",method=\"DeleteModel\"} 3\n"));
  REQUIRE_THAT(text, !Catch::Contains("code=\"INTERNAL\""));
  REQUIRE_THAT(text, Catch::Contains("# TYPE zerocopy_request_duration_seconds histogram\n"));
  REQUIRE_THAT(text, Catch::Contains("zerocopy_request_duration_seconds_count{method=\"GetModel\"} 80000\n"));
  REQUIRE_THAT(text,
               Catch::Contains("zerocopy_request_duration_seconds_bucket{method=\"GetModel\",le=\"0.0001\"} 80000\n"));
  REQUIRE_THAT(text, Catch::Contains("zerocopy_request_duration_seconds_bucket{method=\"GetModel\",le=\"5e-05\"} 0\n"));
  // Add() counts without a duration (Session streams).
  REQUIRE_THAT(text, Catch::Contains("zerocopy_request_duration_seconds_count{method=\"DeleteModel\"} 0\n"));
}

TEST_CASE("GetStats' figures become gauges and counters with units in their names", "[metrics]") {
  v1::GetStatsResponse stats;
  stats.set_version("9.9.9");
  stats.set_gpu_backend("fake");
  stats.set_started_unix_ms(1500);
  stats.set_bytes_used(3 << 20);
  stats.set_host_budget(8 << 20);
  stats.set_models(2);
  stats.set_models_pinned(1);
  stats.set_evictions(4);
  stats.add_sessions()->set_leases(2);
  stats.add_sessions()->set_leases(1);
  auto* publishes = stats.add_publishes();
  publishes->set_origin("preloaded");
  publishes->set_commits(5);
  publishes->set_bytes(1024);
  publishes->set_seconds(0.5);
  auto* gpu = stats.add_gpus();
  gpu->set_uuid("GPU-1");
  gpu->set_uploaded_bytes(4096);
  gpu->set_upload_seconds(0.25);
  gpu->set_leases(3);
  const std::string text = ExpositionText(StatsFamilies(stats));
  for (const char* line : {
           "zerocopy_info{gpu_backend=\"fake\",huge_pages=\"false\",version=\"9.9.9\"} 1\n",
           "zerocopy_start_time_seconds 1.5\n",
           "zerocopy_host_used_bytes 3145728\n",
           "zerocopy_host_budget_bytes 8388608\n",
           "zerocopy_models 2\n",
           "zerocopy_pinned_models 1\n",
           "zerocopy_sessions 2\n",
           "zerocopy_host_leases 3\n",
           "# TYPE zerocopy_evictions_total counter\nzerocopy_evictions_total 4\n",
           "zerocopy_commits_total{origin=\"preloaded\"} 5\n",
           "zerocopy_published_bytes_total{origin=\"preloaded\"} 1024\n",
           "zerocopy_publish_seconds_total{origin=\"preloaded\"} 0.5\n",
           "zerocopy_gpu_uploaded_bytes_total{gpu=\"GPU-1\"} 4096\n",
           "zerocopy_gpu_upload_seconds_total{gpu=\"GPU-1\"} 0.25\n",
           "# TYPE zerocopy_gpu_leases gauge\nzerocopy_gpu_leases{gpu=\"GPU-1\"} 3\n",
       }) {
    INFO(line);
    REQUIRE_THAT(text, Catch::Contains(line));
  }
}

}  // namespace
}  // namespace zerocopy::daemon
