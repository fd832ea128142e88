// The daemon library's named logger, "zerocopyd". main() decides sinks,
// pattern and level; a library user that did not gets spdlog's default
// stderr sink.
#pragma once

#include <memory>

#include "spdlog/spdlog.h"

namespace zerocopy::daemon {

spdlog::logger& Log();

}  // namespace zerocopy::daemon
