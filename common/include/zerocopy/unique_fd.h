// UniqueFd: sole owner of a file descriptor. Move-only; closes on destruction.
// Not thread-safe (like any value type).
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zerocopy {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// The rest of `fd`'s bytes, read to its end (`what` names it in errors).
// Errors: those of read(2); FAILED_PRECONDITION past `max_bytes`.
absl::StatusOr<std::string> ReadAll(int fd, absl::string_view what, size_t max_bytes = SIZE_MAX);

// All `n` bytes of `data` written at `offset` of `fd` (pwrite, through
// short writes and EINTR; `what` names the file in errors). A file system
// with no room left is RESOURCE_EXHAUSTED, "its file system is full".
absl::Status WriteAllAt(int fd, const void* data, size_t n, uint64_t offset, absl::string_view what);

}  // namespace zerocopy
