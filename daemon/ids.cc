#include "ids.h"

#include <sys/random.h>

#include <chrono>

#include "absl/strings/str_format.h"

namespace zerocopy::daemon {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomId() {
  uint64_t r[2] = {0, 0};
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t n = ::getrandom(reinterpret_cast<char*>(r) + got, sizeof r - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  return absl::StrFormat("%016x%016x", r[0], r[1]);
}

}  // namespace zerocopy::daemon
