// zerocopyd: parses flags, installs logging, runs the Server until SIGTERM.
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "absl/synchronization/mutex.h"
#include "config.h"
#include "zerocopy/byte_size.h"
#include "log.h"
#include "server.h"
#include "spdlog/sinks/stdout_sinks.h"

using namespace zerocopy::daemon;
using zerocopy::FormatBytes;
using zerocopy::ParseByteSize;

int main(int argc, char** argv) {
  // Debian's Abseil is built with its debug checks, which keep a graph of
  // every Mutex for deadlock detection: ~4% of a GetModel's CPU, taken on
  // every lock and every Mutex made or destroyed. The unit tests, which
  // link the same Abseil and exercise the same locks in-process, keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"zerocopyd: shares model weights between the processes of this node"};
  std::string config_file, socket, segment_dir, host_budget, log_level, metrics_address;
  bool print_config = false, version = false;
  app.add_option("--config", config_file, "TOML configuration file (config/zerocopyd.toml documents every key)");
  app.add_option("--socket", socket, "unix socket to serve on");
  app.add_option("--segment-dir", segment_dir, "directory (a tmpfs) holding the model segments");
  app.add_option("--host-budget", host_budget, "bytes of models to hold, e.g. 8G or 50%");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  app.add_option("--metrics-address", metrics_address, "Prometheus endpoint HOST:PORT (port 0: any free one), or off");
  app.add_flag("--print-config", print_config, "print the effective configuration as TOML and exit");
  app.add_flag("--version", version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::cout << "zerocopyd " << ZEROCOPY_VERSION << "\n";
    return 0;
  }
  Config config = DefaultConfig();
  auto fail = [](const std::string& what) {
    std::fprintf(stderr, "zerocopyd: %s\n", what.c_str());
    return 2;
  };
  if (!config_file.empty()) {
    absl::Status s = LoadConfigFile(config_file, &config);
    if (!s.ok()) return fail(std::string(s.message()));
  }
  if (!socket.empty()) config.socket = socket;
  if (!segment_dir.empty()) config.segment_dir = segment_dir;
  if (!log_level.empty()) config.log_level = log_level;
  if (!metrics_address.empty()) {
    absl::Status s = CheckMetricsAddress(metrics_address);
    if (!s.ok()) return fail(absl::StrCat("--metrics-address: ", s.message()));
    config.metrics_address = metrics_address;
  }
  if (!host_budget.empty()) {
    auto bytes = ParseByteSize(host_budget);
    if (!bytes.ok()) return fail(absl::StrCat("--host-budget: ", bytes.status().message()));
    config.host_budget = *bytes;
  }
  auto level = spdlog::level::from_str(config.log_level);
  if (level == spdlog::level::off && config.log_level != "off") {
    return fail(absl::StrCat("unknown log level '", config.log_level, "'"));
  }
  if (print_config) {
    std::cout << ConfigToToml(config);
    return 0;
  }

  // Logs go to stderr (journald keeps them under systemd).
  auto logger = std::make_shared<spdlog::logger>("zerocopyd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern(getenv("INVOCATION_ID") ? "%l %v" : "%Y-%m-%dT%H:%M:%S.%e %l %v");
  logger->set_level(level);
  spdlog::register_logger(logger);

  // Signals are taken synchronously by this thread only.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = Server::Start(config);
  if (!server.ok()) {
    logger->critical("cannot start: {}", server.status().ToString());
    return 1;
  }
  logger->info("serving socket={} segment_dir={} host_budget={} pid={} version={}", config.socket, config.segment_dir,
               FormatBytes(config.host_budget), getpid(), ZEROCOPY_VERSION);
  sd_notify(0, "READY=1");

  int sig = 0;
  sigwait(&signals, &sig);
  logger->info("signal={} shutting down", sig);
  sd_notify(0, "STOPPING=1");
  (*server)->Shutdown(config.shutdown_grace_seconds);
  logger->info("stopped");
  return 0;
}
