#include "zerocopy/unique_fd.h"

#include <cerrno>
#include <cstring>

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

absl::Status WriteAllAt(int fd, const void* data, size_t size, uint64_t offset, absl::string_view what) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == ENOSPC || errno == EDQUOT)) {
      return absl::ResourceExhaustedError(absl::StrCat("no room for ", size, " bytes of ", what,
                                                       " (its file system is full): ", std::strerror(errno)));
    }
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("write ", what));
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace zerocopy
