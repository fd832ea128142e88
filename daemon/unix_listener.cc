#include "unix_listener.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "zerocopy/status.h"

namespace zerocopy::daemon {

namespace {

absl::StatusOr<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("socket path '", path, "' must have 1 to ",
                                                   sizeof addr.sun_path - 1, " characters"));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

absl::Status MakeParent(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return absl::OkStatus();
  std::string parent = path.substr(0, slash);
  struct stat st;
  if (::stat(parent.c_str(), &st) == 0) return absl::OkStatus();
  ZC_RETURN_IF_ERROR(MakeParent(parent));
  if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("create socket directory ", parent));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Bind(const std::string& path, mode_t mode, gid_t gid) {
  ZC_ASSIGN_OR_RETURN(sockaddr_un addr, Address(path));
  ZC_RETURN_IF_ERROR(MakeParent(path));
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket; refusing to replace it"));
    }
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("another zerocopyd is serving on ", path, " (stop it first, or use --socket)"));
    }
    ::unlink(path.c_str());  // stale: left by a daemon that died
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoStatus(errno, "socket");
  // Bind under a restrictive umask so the socket is never briefly open to all.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  ::umask(old);
  if (rc != 0) return ErrnoStatus(err, absl::StrCat("bind ", path));
  if (gid != static_cast<gid_t>(-1) && ::chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chown ", path, " to gid ", gid));
  }
  if (::chmod(path.c_str(), mode) != 0) return ErrnoStatus(errno, absl::StrCat("chmod ", path));
  if (::listen(fd.get(), 1024) != 0) return ErrnoStatus(errno, absl::StrCat("listen ", path));
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) return ErrnoStatus(errno, "eventfd");
  return std::unique_ptr<UnixListener>(new UnixListener(path, std::move(fd), std::move(stop), st.st_ino));
}

UnixListener::~UnixListener() {
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && st.st_ino == inode_) ::unlink(path_.c_str());
}

absl::StatusOr<UniqueFd> UnixListener::Accept() {
  for (;;) {
    pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "poll");
    }
    if (fds[1].revents) return absl::CancelledError("listener stopped");
    int client = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client >= 0) return UniqueFd(client);
    if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE) {
      ::usleep(10000);  // out of descriptors: back off, keep serving
      continue;
    }
    return ErrnoStatus(errno, "accept");
  }
}

void UnixListener::Stop() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
}

}  // namespace zerocopy::daemon
