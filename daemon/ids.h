// Time stamps and random ids, as the daemon records them.
#pragma once

#include <cstdint>
#include <string>

namespace zerocopy::daemon {

// Milliseconds since the Unix epoch.
int64_t NowUnixMs();

// 32 hex digits from the kernel's random source.
std::string RandomId();

}  // namespace zerocopy::daemon
