#include "metrics.h"

#include <algorithm>
#include <limits>
#include <sstream>
#include <utility>

#include <prometheus/text_serializer.h>

namespace zerocopy::daemon {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

void LatencyHistogram::Observe(std::chrono::nanoseconds elapsed) {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  const size_t bucket = std::lower_bound(kBounds.begin(), kBounds.end(), seconds) - kBounds.begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<uint64_t>(std::max<int64_t>(elapsed.count(), 0)), std::memory_order_relaxed);
}

ClientMetric::Histogram LatencyHistogram::Read() const {
  ClientMetric::Histogram h;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    ClientMetric::Bucket b;
    b.cumulative_count = cumulative;
    b.upper_bound = i < kBounds.size() ? kBounds[i] : std::numeric_limits<double>::infinity();
    h.bucket.push_back(b);
  }
  h.sample_count = cumulative;  // the +Inf bucket, always consistent with it
  h.sample_sum = static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) * 1e-9;
  return h;
}

RequestMetrics::RequestMetrics(std::vector<std::string> methods)
    : methods_(std::move(methods)), slots_(new Method[methods_.size()]) {}

void RequestMetrics::Record(size_t method, absl::StatusCode code, std::chrono::nanoseconds elapsed) {
  Add(method, code);
  slots_[method].latency.Observe(elapsed);
}

void RequestMetrics::Add(size_t method, absl::StatusCode code) {
  const size_t c = static_cast<size_t>(code) < kCodes ? static_cast<size_t>(code) : size_t{2};  // UNKNOWN
  slots_[method].codes[c].fetch_add(1, std::memory_order_relaxed);
}

uint64_t RequestMetrics::Count(size_t method, absl::StatusCode code) const {
  const size_t c = static_cast<size_t>(code);
  return c < kCodes ? slots_[method].codes[c].load(std::memory_order_relaxed) : 0;
}

uint64_t RequestMetrics::Requests(size_t method) const {
  uint64_t total = 0;
  for (const auto& c : slots_[method].codes) total += c.load(std::memory_order_relaxed);
  return total;
}

namespace {

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

ClientMetric Sample(double value, MetricType type, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter)
    m.counter.value = value;
  else
    m.gauge.value = value;
  return m;
}

// One field of a GpuStats, as a sample's value.
template <auto Field>
double Read(const v1::GpuStats& gpu) {
  return static_cast<double>((gpu.*Field)());
}

// A family of one unlabelled sample.
MetricFamily One(std::string name, std::string help, MetricType type, double value) {
  MetricFamily f = Family(std::move(name), std::move(help), type);
  f.metric.push_back(Sample(value, type));
  return f;
}

}  // namespace

void RequestMetrics::AppendFamilies(std::vector<MetricFamily>* families) const {
  MetricFamily requests =
      Family("zerocopy_requests_total", "gRPC calls answered, by method and status code (Session: streams opened)",
             MetricType::Counter);
  MetricFamily latency = Family("zerocopy_request_duration_seconds",
                                "time from a call's arrival to its answer, by method (Session streams not included)",
                                MetricType::Histogram);
  for (size_t m = 0; m < methods_.size(); ++m) {
    for (size_t c = 0; c < kCodes; ++c) {
      const uint64_t n = slots_[m].codes[c].load(std::memory_order_relaxed);
      // OK always (a method's series starts at 0), errors once seen.
      if (n == 0 && c != 0) continue;
      requests.metric.push_back(
          Sample(static_cast<double>(n), MetricType::Counter,
                 {{"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(c))}, {"method", methods_[m]}}));
    }
    ClientMetric h;
    h.label = {{"method", methods_[m]}};
    h.histogram = slots_[m].latency.Read();
    latency.metric.push_back(std::move(h));
  }
  families->push_back(std::move(requests));
  families->push_back(std::move(latency));
}

std::vector<MetricFamily> StatsFamilies(const v1::GetStatsResponse& s) {
  constexpr auto kGauge = MetricType::Gauge;
  constexpr auto kCounter = MetricType::Counter;
  auto d = [](uint64_t v) { return static_cast<double>(v); };
  std::vector<MetricFamily> out;

  MetricFamily info = Family("zerocopy_info", "the daemon's version and GPU backend (always 1)", kGauge);
  info.metric.push_back(Sample(
      1, kGauge,
      {{"gpu_backend", s.gpu_backend()}, {"huge_pages", s.huge_pages() ? "true" : "false"}, {"version", s.version()}}));
  out.push_back(std::move(info));
  out.push_back(One("zerocopy_start_time_seconds", "when the daemon started (Unix time)", kGauge,
                    static_cast<double>(s.started_unix_ms()) / 1000));

  out.push_back(One("zerocopy_host_used_bytes", "bytes of models held: committed and being published", kGauge,
                    d(s.bytes_used())));
  out.push_back(One("zerocopy_host_staging_bytes", "bytes of models being published (not committed yet)", kGauge,
                    d(s.bytes_staging())));
  out.push_back(One("zerocopy_host_budget_bytes", "the host budget (config host_budget)", kGauge, d(s.host_budget())));
  out.push_back(One("zerocopy_segment_dir_free_bytes", "bytes free on the segment directory's file system", kGauge,
                    d(s.segment_dir_free())));
  out.push_back(One("zerocopy_models", "committed models held", kGauge, d(s.models())));
  out.push_back(
      One("zerocopy_pinned_models", "committed models pinned against eviction", kGauge, d(s.models_pinned())));
  uint64_t leases = 0;
  for (const auto& session : s.sessions()) leases += session.leases();
  out.push_back(
      One("zerocopy_sessions", "client sessions open (one per client process)", kGauge, d(s.sessions_size())));
  out.push_back(One("zerocopy_host_leases", "host leases held (a session's lease on a model)", kGauge, d(leases)));
  out.push_back(One("zerocopy_evictions_total", "models evicted to make room", kCounter, d(s.evictions())));
  out.push_back(One("zerocopy_evicted_bytes_total", "bytes of the models evicted", kCounter, d(s.bytes_evicted())));
  out.push_back(
      One("zerocopy_pulls_total", "models transferred from another node and committed here", kCounter, d(s.pulls())));
  out.push_back(One("zerocopy_pulled_bytes_total", "bytes of those transfers", kCounter, d(s.bytes_pulled())));

  MetricFamily commits = Family("zerocopy_commits_total", "models committed, by origin kind", kCounter);
  MetricFamily dedup =
      Family("zerocopy_deduplicated_commits_total", "commits whose bytes were here already, by origin kind", kCounter);
  MetricFamily published = Family("zerocopy_published_bytes_total", "bytes committed, by origin kind", kCounter);
  MetricFamily publish_seconds = Family("zerocopy_publish_seconds_total",
                                        "time from CreateModel to the commit's answer (writing and hashing), summed "
                                        "by origin kind; published bytes over it is the bandwidth",
                                        kCounter);
  for (const auto& p : s.publishes()) {
    commits.metric.push_back(Sample(d(p.commits()), kCounter, {{"origin", p.origin()}}));
    dedup.metric.push_back(Sample(d(p.deduplicated()), kCounter, {{"origin", p.origin()}}));
    published.metric.push_back(Sample(d(p.bytes()), kCounter, {{"origin", p.origin()}}));
    publish_seconds.metric.push_back(Sample(p.seconds(), kCounter, {{"origin", p.origin()}}));
  }
  for (auto* f : {&commits, &dedup, &published, &publish_seconds}) out.push_back(std::move(*f));

  struct GpuFamily {
    const char* name;
    const char* help;
    MetricType type;
    double (*value)(const v1::GpuStats&);
  };
  static const GpuFamily kGpu[] = {
      {"zerocopy_gpu_used_bytes", "device memory held by copies (those being made included)", kGauge,
       &Read<&v1::GpuStats::bytes_used>},
      {"zerocopy_gpu_budget_bytes", "device memory the daemon may hold (config gpu_budget)", kGauge,
       &Read<&v1::GpuStats::budget>},
      {"zerocopy_gpu_memory_bytes", "the GPU's memory", kGauge, &Read<&v1::GpuStats::total_memory>},
      {"zerocopy_gpu_copies", "device copies of models held", kGauge, &Read<&v1::GpuStats::copies>},
      {"zerocopy_gpu_leases", "session leases over the device copies", kGauge, &Read<&v1::GpuStats::leases>},
      {"zerocopy_gpu_uploads_total", "device copies made", kCounter, &Read<&v1::GpuStats::uploads>},
      {"zerocopy_gpu_uploaded_bytes_total", "bytes of the device copies made", kCounter,
       &Read<&v1::GpuStats::uploaded_bytes>},
      {"zerocopy_gpu_upload_seconds_total",
       "time the device copies took to make; uploaded bytes over it is the bandwidth", kCounter,
       &Read<&v1::GpuStats::upload_seconds>},
      {"zerocopy_gpu_evictions_total", "device copies evicted to make room", kCounter, &Read<&v1::GpuStats::evictions>},
  };
  for (const GpuFamily& spec : kGpu) {
    MetricFamily f = Family(spec.name, spec.help, spec.type);
    for (const auto& gpu : s.gpus()) f.metric.push_back(Sample(spec.value(gpu), spec.type, {{"gpu", gpu.uuid()}}));
    out.push_back(std::move(f));
  }
  return out;
}

std::string ExpositionText(const std::vector<MetricFamily>& families) {
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace zerocopy::daemon
