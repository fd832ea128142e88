// UnixListener: the daemon's listening unix socket. Binds with the
// configured mode and group, replaces a stale socket left by a crashed
// daemon, refuses to steal one that a live daemon still serves, and
// removes its socket file when destroyed (if it is still ours).
//
// Thread safety: Accept may run on one thread while Stop is called from
// another.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy::daemon {

class UnixListener {
 public:
  // Errors: FAILED_PRECONDITION (a live daemon answers on `path`, or the
  // path is not a socket), INVALID_ARGUMENT (path too long), INTERNAL.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Bind(const std::string& path, mode_t mode, gid_t gid);
  ~UnixListener();

  // Blocks until a client connects (returns its fd) or Stop() was called
  // (returns CANCELLED).
  absl::StatusOr<UniqueFd> Accept();
  void Stop();

  const std::string& path() const { return path_; }

 private:
  UnixListener(std::string path, UniqueFd fd, UniqueFd stop_fd, ino_t inode)
      : path_(std::move(path)), fd_(std::move(fd)), stop_fd_(std::move(stop_fd)), inode_(inode) {}
  std::string path_;
  UniqueFd fd_;
  UniqueFd stop_fd_;  // eventfd
  ino_t inode_;
};

}  // namespace zerocopy::daemon
