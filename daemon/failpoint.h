// Failpoints for the fault tests: a daemon started with
// ZEROCOPYD_FAILPOINT=NAME in its environment kills itself (SIGKILL) when
// it reaches the point NAME, so that a test can crash it at an exact step
// (tests/cpp/fault_test.cc). ZEROCOPYD_FAILPOINT=NAME:hold=PATH instead
// holds every call that reaches NAME for as long as the file PATH exists
// (a slow step, on demand). Unset, a failpoint costs one comparison.
#pragma once

#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace zerocopy::daemon {

inline void Failpoint(const char* name) {
  static const char* const armed = std::getenv("ZEROCOPYD_FAILPOINT");
  if (armed == nullptr) return;
  const size_t n = std::strlen(name);
  if (std::strncmp(armed, name, n) != 0) return;
  if (armed[n] == '\0') ::raise(SIGKILL);
  constexpr char kHold[] = ":hold=";
  if (std::strncmp(armed + n, kHold, sizeof kHold - 1) == 0) {
    struct stat st;
    while (::stat(armed + n + sizeof kHold - 1, &st) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace zerocopy::daemon
