// Config: every setting of zerocopyd, its embedded default, and loading
// from TOML (config/zerocopyd.toml documents each key) and from flags.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace zerocopy::daemon {

struct Config {
  std::string socket;  // unix socket path
  uint32_t socket_mode = 0660;
  std::string socket_group;              // group owning the socket; "" keeps ours
  std::string segment_dir;               // tmpfs directory holding the segments
  std::string segment_group;             // group owning the directory; "" keeps ours
  uint64_t host_budget = 0;              // bytes of models (committed + staging)
  uint64_t tmpfs_reserve = 64ull << 20;  // keep this much free on the tmpfs
  bool verify_on_start = true;           // rehash every segment when re-adopting it
  std::vector<uint32_t> admin_uids;      // empty: anyone who can connect
  std::vector<uint32_t> admin_gids;
  uint64_t max_message_bytes = 512ull << 20;
  // What one user may cost the daemon before committing anything
  // (config/zerocopyd.toml documents each).
  uint32_t max_tensors = 262144;                              // per model
  uint32_t max_staging_per_uid = 16;                          // uncommitted models held at once
  uint64_t max_staging_bytes_per_uid = 0;                     // their bytes; 0: the host budget
  uint64_t max_staging_manifest_bytes_per_uid = 64ull << 20;  // their manifests, kept in the daemon's memory
  double staging_idle_seconds = 600;       // an uncommitted model not written for this long is dropped
  uint32_t max_connections_per_uid = 256;  // open connections of one uid (root: no limit)
  double handshake_timeout_seconds = 10;   // a new connection must send the HTTP/2 preface within this
  double connection_idle_seconds = 600;    // a connection with no call for this long is closed
  uint32_t hash_threads = 0;               // 0: one per core
  uint32_t worker_threads = 4;             // for commits, and as many for GPU uploads (work_queue.h)
  double shutdown_grace_seconds = 5;
  std::string log_level = "info";
  // Prometheus endpoint: "HOST:PORT" (an IP literal; port 0: any free one)
  // or "off". Loopback by default: it has no authentication.
  std::string metrics_address = "127.0.0.1:9479";
  // GPU sharing (config/zerocopyd.toml documents each).
  std::string gpu_backend = "auto";  // auto, cuda, off, fake (tests)
  double gpu_budget_fraction = 0.9;  // of each GPU's memory, unless gpu_budget_bytes
  uint64_t gpu_budget_bytes = 0;
  std::vector<std::string> fake_gpus;  // gpu_backend = "fake": their UUIDs
  uint64_t fake_gpu_memory = 1ull << 30;
  std::string fake_gpu_dir;  // "": <segment_dir>.fake-gpu
};

// The embedded defaults for this user: as root, /run/zerocopy/zerocopyd.sock
// and /dev/shm/zerocopy; otherwise $XDG_RUNTIME_DIR/zerocopy/zerocopyd.sock
// (or /tmp/zerocopy-$UID/zerocopyd.sock) and /dev/shm/zerocopy-$UID. The host
// budget is half the machine's RAM.
Config DefaultConfig();

// Overlays the keys of a TOML file on `config`. Errors: NOT_FOUND for a
// missing file, INVALID_ARGUMENT for a syntax error, an unknown key or a bad
// value (the message names the key and line).
absl::Status LoadConfigFile(const std::string& path, Config* config);

// The configuration as TOML, every key present (for --print-config).
std::string ConfigToToml(const Config& config);

// A metrics_address: "off", or "HOST:PORT" with HOST an IPv4 literal or a
// bracketed IPv6 one ("[::1]") and PORT in [0, 65535] (0: any free port).
// Errors: INVALID_ARGUMENT, saying what is expected.
absl::Status CheckMetricsAddress(absl::string_view address);

}  // namespace zerocopy::daemon
