// UnixListener: the daemon's listening unix socket. Binds with the
// configured mode and group, replaces a stale socket left by a crashed
// daemon, refuses to steal one that a live daemon still serves, and
// removes its socket file when destroyed (if it is still ours).
//
// It hands over only connections that have sent the HTTP/2 client preface
// within the handshake timeout: connections handed to gRPC by descriptor
// skip gRPC's own handshake deadline, so a peer that sends half a preface
// (or nothing) would otherwise hold a descriptor for ever.
//
// Thread safety: Accept may run on one thread while Stop is called from
// another.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy::daemon {

class UnixListener {
 public:
  // Errors: FAILED_PRECONDITION (a live daemon answers on `path`, or the
  // path is not a socket), INVALID_ARGUMENT (path too long), INTERNAL.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Bind(const std::string& path, mode_t mode, gid_t gid);
  ~UnixListener();

  // Decides, right after accept(), whether a connection may stay and wait
  // for its preface; a refused one is closed at once. Called on Accept's
  // thread.
  using Admit = std::function<bool(int fd)>;

  // Blocks until an admitted connection has sent the 24-byte HTTP/2 client
  // preface (returns its fd, the preface still unread) or Stop() was
  // called (returns CANCELLED). Connections that close, send anything
  // else, or take longer than `handshake_timeout` are closed meanwhile.
  absl::StatusOr<UniqueFd> Accept(const Admit& admit, std::chrono::milliseconds handshake_timeout);
  void Stop();

  const std::string& path() const { return path_; }
  ino_t inode() const { return inode_; }  // of the socket file bound

 private:
  UnixListener(std::string path, UniqueFd fd, UniqueFd stop_fd, ino_t inode)
      : path_(std::move(path)), fd_(std::move(fd)), stop_fd_(std::move(stop_fd)), inode_(inode) {}
  std::string path_;
  UniqueFd fd_;
  UniqueFd stop_fd_;  // eventfd
  ino_t inode_;
  struct Pending {
    UniqueFd fd;
    std::chrono::steady_clock::time_point deadline;
    // Part of the preface came: look again no sooner than this (poll would
    // report the unread part at once, for ever).
    std::chrono::steady_clock::time_point next_look;
    std::chrono::milliseconds backoff{0};  // doubles each time part of it is all there is
  };
  std::vector<Pending> pending_;  // Accept's thread only
};

}  // namespace zerocopy::daemon
