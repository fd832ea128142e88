// Failpoints for the fault tests: a daemon started with
// ZEROCOPYD_FAILPOINT=NAME in its environment kills itself (SIGKILL) when
// it reaches the point NAME, so that a test can crash it at an exact step
// (tests/cpp/daemon/fault_test.cc). ZEROCOPYD_FAILPOINT=NAME:hold=PATH instead
// holds every call that reaches NAME for as long as the file PATH exists
// (a slow step, on demand), and creates PATH.reached when a call is held
// there, so that a test can act in the gap without guessing how long to
// sleep (tests/cpp/daemon/fault_test.cc, security_test.cc). Unset, a
// failpoint costs one comparison.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
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
    const char* path = armed + n + sizeof kHold - 1;
    struct stat st;
    if (::stat(path, &st) != 0) return;  // not holding now
    const int reached = ::open((std::string(path) + ".reached").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (reached >= 0) ::close(reached);
    while (::stat(path, &st) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace zerocopy::daemon
