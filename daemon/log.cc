#include "log.h"

#include "spdlog/sinks/stdout_sinks.h"

namespace zerocopy::daemon {

spdlog::logger& Log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto existing = spdlog::get("zerocopyd");
    if (existing) return existing;
    auto created = std::make_shared<spdlog::logger>("zerocopyd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    spdlog::register_logger(created);
    return created;
  }();
  return *logger;
}

}  // namespace zerocopy::daemon
