#include "config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "absl/strings/string_view.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "zerocopy/byte_size.h"

namespace zerocopy::daemon {

Config DefaultConfig() {
  Config c;
  uid_t uid = geteuid();
  if (uid == 0) {
    c.socket = "/run/zerocopy/zerocopyd.sock";
    c.segment_dir = "/dev/shm/zerocopy";
  } else {
    const char* xdg = std::getenv("XDG_RUNTIME_DIR");
    c.socket = (xdg && *xdg) ? absl::StrCat(xdg, "/zerocopy/zerocopyd.sock")
                             : absl::StrCat("/tmp/zerocopy-", uid, "/zerocopyd.sock");
    c.segment_dir = absl::StrCat("/dev/shm/zerocopy-", uid);
  }
  c.host_budget = PhysicalMemory() / 2;
  return c;
}

absl::Status CheckMetricsAddress(absl::string_view address) {
  if (address == "off") return absl::OkStatus();
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' ", why,
                                                   ": write HOST:PORT with HOST an IP address (127.0.0.1, 0.0.0.0, "
                                                   "[::1]) and PORT 0-65535 (0: any free port), or off"));
  };
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) return bad("has no port");
  absl::string_view host = address.substr(0, colon);
  absl::string_view port = address.substr(colon + 1);
  uint32_t number;
  if (port.empty() || !absl::ascii_isdigit(port[0]) || !absl::SimpleAtoi(port, &number) || number > 65535) {
    return bad("has no valid port");
  }
  in6_addr parsed;
  const bool v6 = host.size() > 2 && host.front() == '[' && host.back() == ']';
  const std::string literal(v6 ? host.substr(1, host.size() - 2) : host);
  if (::inet_pton(v6 ? AF_INET6 : AF_INET, literal.c_str(), &parsed) != 1) return bad("has no IP address as host");
  return absl::OkStatus();
}

namespace {

std::string Where(const toml::node& node) { return absl::StrCat("line ", node.source().begin.line); }

absl::Status ReadString(const toml::node& node, absl::string_view key, std::string* out) {
  auto v = node.value<std::string>();
  if (!v) return absl::InvalidArgumentError(absl::StrCat(key, " (", Where(node), ") must be a string"));
  *out = *v;
  return absl::OkStatus();
}

absl::Status ReadSize(const toml::node& node, absl::string_view key, uint64_t* out) {
  if (auto i = node.value<int64_t>()) {
    if (*i < 0) return absl::InvalidArgumentError(absl::StrCat(key, " (", Where(node), ") must not be negative"));
    *out = static_cast<uint64_t>(*i);
    return absl::OkStatus();
  }
  if (auto s = node.value<std::string>()) {
    auto parsed = ParseByteSize(*s);
    if (!parsed.ok())
      return absl::InvalidArgumentError(absl::StrCat(key, " (", Where(node), "): ", parsed.status().message()));
    *out = *parsed;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(key, " (", Where(node), ") must be a byte count or a string like \"8G\""));
}

absl::Status ReadIdList(const toml::node& node, absl::string_view key, std::vector<uint32_t>* out) {
  const toml::array* arr = node.as_array();
  if (!arr) return absl::InvalidArgumentError(absl::StrCat(key, " (", Where(node), ") must be an array of integers"));
  out->clear();
  for (const auto& e : *arr) {
    auto v = e.value<int64_t>();
    if (!v || *v < 0 || *v > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(key, " (", Where(node), ") must hold ids in [0, 2^32)"));
    }
    out->push_back(static_cast<uint32_t>(*v));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadConfigFile(const std::string& path, Config* config) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file ", path, " cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  toml::table table;
  try {
    table = toml::parse(text.str(), path);
  } catch (const toml::parse_error& err) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ":", err.source().begin.line, ": ", std::string(err.description())));
  }
  for (const auto& [k, node] : table) {
    std::string key(k.str());
    absl::Status s;
    if (key == "socket")
      s = ReadString(node, key, &config->socket);
    else if (key == "socket_group")
      s = ReadString(node, key, &config->socket_group);
    else if (key == "segment_dir")
      s = ReadString(node, key, &config->segment_dir);
    else if (key == "segment_group")
      s = ReadString(node, key, &config->segment_group);
    else if (key == "log_level")
      s = ReadString(node, key, &config->log_level);
    else if (key == "metrics_address") {
      s = ReadString(node, key, &config->metrics_address);
      absl::Status address = s.ok() ? CheckMetricsAddress(config->metrics_address) : absl::OkStatus();
      if (!address.ok())
        s = absl::InvalidArgumentError(absl::StrCat("metrics_address (", Where(node), "): ", address.message()));
    } else if (key == "host_budget")
      s = ReadSize(node, key, &config->host_budget);
    else if (key == "tmpfs_reserve")
      s = ReadSize(node, key, &config->tmpfs_reserve);
    else if (key == "max_message_bytes")
      s = ReadSize(node, key, &config->max_message_bytes);
    else if (key == "max_staging_bytes_per_uid")
      s = ReadSize(node, key, &config->max_staging_bytes_per_uid);
    else if (key == "max_staging_manifest_bytes_per_uid")
      s = ReadSize(node, key, &config->max_staging_manifest_bytes_per_uid);
    else if (key == "max_tensors" || key == "max_staging_per_uid" || key == "max_connections_per_uid") {
      auto v = node.value<int64_t>();
      if (!v || *v < 1 || *v > (int64_t{1} << 24)) {
        s = absl::InvalidArgumentError(absl::StrCat(key, " (", Where(node), ") must be in [1, 16777216]"));
      } else {
        (key == "max_tensors"           ? config->max_tensors
         : key == "max_staging_per_uid" ? config->max_staging_per_uid
                                        : config->max_connections_per_uid) = static_cast<uint32_t>(*v);
      }
    } else if (key == "staging_idle_seconds" || key == "handshake_timeout_seconds" ||
               key == "connection_idle_seconds") {
      auto v = node.value<double>();
      // At most a year: kept as milliseconds in an int by gRPC.
      if (!v || !(*v > 0) || *v > 365 * 86400.0) {
        s = absl::InvalidArgumentError(
            absl::StrCat(key, " (", Where(node), ") must be a positive number of seconds, at most a year"));
      } else {
        (key == "staging_idle_seconds"        ? config->staging_idle_seconds
         : key == "handshake_timeout_seconds" ? config->handshake_timeout_seconds
                                              : config->connection_idle_seconds) = *v;
      }
    } else if (key == "admin_uids")
      s = ReadIdList(node, key, &config->admin_uids);
    else if (key == "admin_gids")
      s = ReadIdList(node, key, &config->admin_gids);
    else if (key == "socket_mode") {
      auto v = node.value<int64_t>();
      if (!v || *v < 0 || *v > 0777)
        s = absl::InvalidArgumentError(
            absl::StrCat("socket_mode (", Where(node), ") must be an octal mode like 0o660"));
      else
        config->socket_mode = static_cast<uint32_t>(*v);
    } else if (key == "verify_on_start") {
      auto v = node.value<bool>();
      if (!v)
        s = absl::InvalidArgumentError(absl::StrCat("verify_on_start (", Where(node), ") must be true or false"));
      else
        config->verify_on_start = *v;
    } else if (key == "hash_threads") {
      auto v = node.value<int64_t>();
      if (!v || *v < 0 || *v > 256)
        s = absl::InvalidArgumentError(absl::StrCat("hash_threads (", Where(node), ") must be in [0, 256]"));
      else
        config->hash_threads = static_cast<uint32_t>(*v);
    } else if (key == "worker_threads") {
      auto v = node.value<int64_t>();
      if (!v || *v < 1 || *v > 256)
        s = absl::InvalidArgumentError(absl::StrCat("worker_threads (", Where(node), ") must be in [1, 256]"));
      else
        config->worker_threads = static_cast<uint32_t>(*v);
    } else if (key == "gpu_backend") {
      s = ReadString(node, key, &config->gpu_backend);
      if (s.ok() && config->gpu_backend != "auto" && config->gpu_backend != "cuda" && config->gpu_backend != "off" &&
          config->gpu_backend != "fake") {
        s = absl::InvalidArgumentError(
            absl::StrCat("gpu_backend (", Where(node), ") must be \"auto\", \"cuda\", \"off\" or \"fake\""));
      }
    } else if (key == "gpu_budget") {
      auto text = node.value<std::string>();
      if (text && !text->empty() && text->back() == '%') {
        double pct;
        if (!absl::SimpleAtod(text->substr(0, text->size() - 1), &pct) || pct <= 0 || pct > 100) {
          s = absl::InvalidArgumentError(
              absl::StrCat("gpu_budget (", Where(node), "): a percentage must be in (0, 100]"));
        } else {
          config->gpu_budget_fraction = pct / 100;
          config->gpu_budget_bytes = 0;
        }
      } else {
        s = ReadSize(node, key, &config->gpu_budget_bytes);
      }
    } else if (key == "fake_gpus") {
      const toml::array* arr = node.as_array();
      if (!arr)
        s = absl::InvalidArgumentError(absl::StrCat("fake_gpus (", Where(node), ") must be an array of strings"));
      config->fake_gpus.clear();
      for (size_t i = 0; arr && s.ok() && i < arr->size(); ++i) {
        auto v = (*arr)[i].value<std::string>();
        if (!v)
          s = absl::InvalidArgumentError(absl::StrCat("fake_gpus (", Where(node), ") must be an array of strings"));
        else
          config->fake_gpus.push_back(*v);
      }
    } else if (key == "fake_gpu_memory") {
      s = ReadSize(node, key, &config->fake_gpu_memory);
    } else if (key == "fake_gpu_dir") {
      s = ReadString(node, key, &config->fake_gpu_dir);
    } else if (key == "shutdown_grace_seconds") {
      auto v = node.value<double>();
      if (!v || *v < 0)
        s = absl::InvalidArgumentError(
            absl::StrCat("shutdown_grace_seconds (", Where(node), ") must be a non-negative number"));
      else
        config->shutdown_grace_seconds = *v;
    } else {
      s = absl::InvalidArgumentError(absl::StrCat("unknown key '", key, "' (", Where(node), ")"));
    }
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  }
  return absl::OkStatus();
}

std::string ConfigToToml(const Config& c) {
  auto quote = [](const std::string& s) {
    std::ostringstream os;
    os << toml::value<std::string>(s);
    return os.str();
  };
  auto ids = [](const std::vector<uint32_t>& v) { return absl::StrCat("[", absl::StrJoin(v, ", "), "]"); };
  return absl::StrCat("socket = ", quote(c.socket), "\n", "socket_mode = 0o", absl::StrFormat("%o", c.socket_mode),
                      "\n", "socket_group = ", quote(c.socket_group), "\n", "segment_dir = ", quote(c.segment_dir),
                      "\n", "segment_group = ", quote(c.segment_group), "\n", "host_budget = ", c.host_budget, "  # ",
                      FormatBytes(c.host_budget), "\n", "tmpfs_reserve = ", c.tmpfs_reserve, "  # ",
                      FormatBytes(c.tmpfs_reserve), "\n", "verify_on_start = ", c.verify_on_start ? "true" : "false",
                      "\n", "admin_uids = ", ids(c.admin_uids), "\n", "admin_gids = ", ids(c.admin_gids), "\n",
                      "max_message_bytes = ", c.max_message_bytes, "\n", "max_tensors = ", c.max_tensors, "\n",
                      "max_staging_per_uid = ", c.max_staging_per_uid, "\n",
                      "max_staging_bytes_per_uid = ", c.max_staging_bytes_per_uid, "\n",
                      "max_staging_manifest_bytes_per_uid = ", c.max_staging_manifest_bytes_per_uid, "\n",
                      "staging_idle_seconds = ", absl::StrFormat("%g", c.staging_idle_seconds), "\n",
                      "handshake_timeout_seconds = ", absl::StrFormat("%g", c.handshake_timeout_seconds), "\n",
                      "connection_idle_seconds = ", absl::StrFormat("%g", c.connection_idle_seconds), "\n",
                      "max_connections_per_uid = ", c.max_connections_per_uid, "\n", "hash_threads = ", c.hash_threads,
                      "\n", "worker_threads = ", c.worker_threads, "\n",
                      "shutdown_grace_seconds = ", absl::StrFormat("%g", c.shutdown_grace_seconds), "\n",
                      "log_level = ", quote(c.log_level), "\n", "metrics_address = ", quote(c.metrics_address), "\n",
                      "gpu_backend = ", quote(c.gpu_backend), "\n", "gpu_budget = ",
                      c.gpu_budget_bytes != 0 ? absl::StrCat(c.gpu_budget_bytes)
                                              : quote(absl::StrFormat("%g%%", c.gpu_budget_fraction * 100)),
                      "\n");
}

}  // namespace zerocopy::daemon
