// Failpoints for the fault tests: a daemon started with
// ZEROCOPYD_FAILPOINT=NAME in its environment kills itself (SIGKILL) when
// it reaches the point NAME, so that a test can crash it at an exact step
// (tests/cpp/fault_test.cc). Unset, a failpoint costs one comparison.
#pragma once

#include <signal.h>

#include <cstdlib>
#include <cstring>

namespace zerocopy::daemon {

inline void Failpoint(const char* name) {
  static const char* const armed = std::getenv("ZEROCOPYD_FAILPOINT");
  if (armed != nullptr && std::strcmp(armed, name) == 0) ::raise(SIGKILL);
}

}  // namespace zerocopy::daemon
