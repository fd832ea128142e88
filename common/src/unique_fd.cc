#include "zerocopy/unique_fd.h"

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "zerocopy/status.h"

namespace zerocopy {

absl::StatusOr<std::string> ReadAll(int fd, absl::string_view what, size_t max_bytes) {
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("read ", what));
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      return absl::FailedPreconditionError(absl::StrCat(what, " is larger than ", max_bytes, " bytes"));
    }
  }
}

}  // namespace zerocopy
