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

absl::Status WriteAllAt(int fd, const void* data, size_t n, uint64_t offset, absl::string_view what) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : ENOSPC;  // nothing written and no error: no room
      return ErrnoStatus(err, absl::StrCat("write ", n, " bytes at ", offset, " of ", what,
                                           err == ENOSPC || err == EDQUOT ? " (its file system is full)" : ""));
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace zerocopy
