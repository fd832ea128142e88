// zerocopyd's configuration: sizes, the TOML file, and --print-config's
// output reading back to the same settings.
#include <fstream>

#include <catch2/catch.hpp>

#include "config.h"
#include "support.h"

namespace zerocopy::daemon {
namespace {

std::string Write(const testing::TempDir& dir, const std::string& text) {
  std::string path = dir.path() + "/zerocopyd.toml";
  std::ofstream(path) << text;
  return path;
}

TEST_CASE("a config file sets every key", "[config]") {
  testing::TempDir dir;
  Config c = DefaultConfig();
  auto path = Write(dir, R"(
socket = "/x/s.sock"
socket_mode = 0o600
socket_group = "users"
segment_dir = "/dev/shm/x"
segment_group = "100"
host_budget = "2G"
tmpfs_reserve = 1024
verify_on_start = false
admin_uids = [0, 1000]
admin_gids = [27]
max_message_bytes = "16M"
hash_threads = 3
worker_threads = 7
shutdown_grace_seconds = 1.5
log_level = "debug"
handshake_timeout_seconds = 2.5
connection_idle_seconds = 30
metrics_address = "0.0.0.0:9100"
)");
  REQUIRE(LoadConfigFile(path, &c).ok());
  REQUIRE(c.socket == "/x/s.sock");
  REQUIRE(c.socket_mode == 0600);
  REQUIRE(c.socket_group == "users");
  REQUIRE(c.segment_dir == "/dev/shm/x");
  REQUIRE(c.segment_group == "100");
  REQUIRE(c.host_budget == 2ull << 30);
  REQUIRE(c.tmpfs_reserve == 1024);
  REQUIRE_FALSE(c.verify_on_start);
  REQUIRE(c.admin_uids == std::vector<uint32_t>{0, 1000});
  REQUIRE(c.admin_gids == std::vector<uint32_t>{27});
  REQUIRE(c.max_message_bytes == 16ull << 20);
  REQUIRE(c.hash_threads == 3);
  REQUIRE(c.worker_threads == 7);
  REQUIRE(c.shutdown_grace_seconds == 1.5);
  REQUIRE(c.log_level == "debug");
  REQUIRE(c.handshake_timeout_seconds == 2.5);
  REQUIRE(c.connection_idle_seconds == 30);
  REQUIRE(c.metrics_address == "0.0.0.0:9100");

  SECTION("the printed config reads back the same") {
    Config again = DefaultConfig();
    REQUIRE(LoadConfigFile(Write(dir, ConfigToToml(c)), &again).ok());
    REQUIRE(ConfigToToml(again) == ConfigToToml(c));
  }
}

TEST_CASE("config errors name the key and line", "[config]") {
  testing::TempDir dir;
  Config c = DefaultConfig();
  struct Case {
    const char* text;
    const char* needle;
  };
  for (const auto& bad : std::vector<Case>{
           {"\n\nsoket = \"/x\"\n", "unknown key 'soket' (line 3)"},
           {"host_budget = \"lots\"\n", "host_budget (line 1)"},
           {"host_budget = -5\n", "host_budget (line 1)"},
           {"socket = 5\n", "socket (line 1) must be a string"},
           {"admin_uids = [-1]\n", "admin_uids"},
           {"verify_on_start = \"yes\"\n", "verify_on_start"},
           {"socket_mode = 0o7777\n", "socket_mode"},
           {"worker_threads = 0\n", "worker_threads (line 1) must be in [1, 256]"},
           {"socket = \"unterminated\n", "zerocopyd.toml:1"},
           {"\nmetrics_address = \"9479\"\n", "metrics_address (line 2): metrics address '9479' has no port"},
           {"metrics_address = 9479\n", "metrics_address (line 1) must be a string"},
       }) {
    INFO(bad.text);
    auto status = LoadConfigFile(Write(dir, bad.text), &c);
    REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
    REQUIRE_THAT(std::string(status.message()), Catch::Contains(bad.needle));
  }
  REQUIRE(LoadConfigFile(dir.path() + "/missing.toml", &c).code() == absl::StatusCode::kNotFound);
}

TEST_CASE("metrics_address is an IP address and port, or off", "[config]") {
  for (const char* good : {"off", "127.0.0.1:9479", "0.0.0.0:0", "127.0.0.1:65535", "[::1]:9479", "[::]:80"}) {
    INFO(good);
    REQUIRE(CheckMetricsAddress(good).ok());
  }
  // A bare port would listen on every interface; host names are not
  // resolved; the port is a number in range.
  for (const char* bad : {"", "on", "Off", "9479", ":9479", "localhost:9479", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x",
                          "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80", "::1:9479", "[::1:9479", "[::1]",
                          "256.0.0.1:80", "127.0.0.1:80s", "127.0.0.1:80,[::1]:80"}) {
    INFO(bad);
    REQUIRE(CheckMetricsAddress(bad).code() == absl::StatusCode::kInvalidArgument);
  }
  REQUIRE_THAT(std::string(CheckMetricsAddress("9479").message()), Catch::Contains("or off"));
  testing::TempDir dir;
  Config c = DefaultConfig();
  REQUIRE(LoadConfigFile(Write(dir, "metrics_address = \"off\"\n"), &c).ok());
  REQUIRE(c.metrics_address == "off");
}

TEST_CASE("defaults are usable without a config", "[config]") {
  Config c = DefaultConfig();
  REQUIRE(c.metrics_address == "127.0.0.1:9479");  // loopback: the endpoint has no authentication
  REQUIRE_FALSE(c.socket.empty());
  REQUIRE_FALSE(c.segment_dir.empty());
  REQUIRE(c.host_budget > 0);
  if (::geteuid() == 0) {
    REQUIRE(c.socket == "/run/zerocopy/zerocopyd.sock");
    REQUIRE(c.segment_dir == "/dev/shm/zerocopy");
  }
}

}  // namespace
}  // namespace zerocopy::daemon
