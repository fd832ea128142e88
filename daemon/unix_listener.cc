#include "unix_listener.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "failpoint.h"
#include "own_directory.h"
#include "zerocopy/status.h"

namespace zerocopy::daemon {

namespace {

absl::StatusOr<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' must have 1 to ", sizeof addr.sun_path - 1, " characters"));
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
  // Every step below goes through the socket's directory, opened once and
  // checked to be this daemon's own: nobody else can swap the socket for a
  // symlink between bind() and the ownership change (which would hand, say,
  // /etc/shadow to the socket's group when the daemon runs as root).
  const auto slash = path.rfind('/');
  const std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) return ErrnoStatus(errno, absl::StrCat("open socket directory ", parent));
  ZC_RETURN_IF_ERROR(CheckOwnDirectory(dir.get(), "socket directory", parent));
  struct stat st;
  if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket; refusing to replace it"));
    }
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("another zerocopyd is serving on ", path, " (stop it first, or use --socket)"));
    }
    ::unlinkat(dir.get(), name.c_str(), 0);  // stale: left by a daemon that died
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoStatus(errno, "socket");
  // Bind under a restrictive umask so the socket is never briefly open to all.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  ::umask(old);
  if (rc != 0) return ErrnoStatus(err, absl::StrCat("bind ", path));
  Failpoint("listen:bound");
  // The node bind() made, by an O_PATH descriptor that never follows a
  // symlink; its owner and mode change through that descriptor only.
  UniqueFd node(::openat(dir.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!node) return ErrnoStatus(errno, absl::StrCat("open ", path));
  if (::fstat(node.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " was replaced by something else than our socket; refusing"));
  }
  if (gid != static_cast<gid_t>(-1) &&
      ::fchownat(node.get(), "", static_cast<uid_t>(-1), gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chown ", path, " to gid ", gid));
  }
  // chmod has no AT_EMPTY_PATH: /proc/self/fd/N names the very inode opened.
  const std::string by_fd = absl::StrCat("/proc/self/fd/", node.get());
  if (::chmod(by_fd.c_str(), mode) != 0) return ErrnoStatus(errno, absl::StrCat("chmod ", path));
  if (::listen(fd.get(), 1024) != 0) return ErrnoStatus(errno, absl::StrCat("listen ", path));
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) return ErrnoStatus(errno, "eventfd");
  return std::unique_ptr<UnixListener>(new UnixListener(path, std::move(fd), std::move(stop), st.st_ino));
}

UnixListener::~UnixListener() {
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && st.st_ino == inode_) ::unlink(path_.c_str());
}

absl::StatusOr<UniqueFd> UnixListener::Accept(const Admit& admit, std::chrono::milliseconds handshake_timeout) {
  using Clock = std::chrono::steady_clock;
  static constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  static constexpr size_t kPrefaceSize = sizeof kPreface - 1;
  static constexpr auto kFirstBackoff = std::chrono::milliseconds(5);
  static constexpr auto kMaxBackoff = std::chrono::milliseconds(500);
  std::vector<pollfd> fds;  // the listener, the stop eventfd, then pending_ in order
  for (;;) {
    // Expire, and find how long poll may sleep.
    const auto now = Clock::now();
    auto wake = Clock::time_point::max();
    for (size_t i = 0; i < pending_.size();) {
      if (now >= pending_[i].deadline) {
        pending_[i] = std::move(pending_.back());  // closes the expired one
        pending_.pop_back();
        continue;
      }
      wake = std::min(wake, pending_[i].deadline);
      if (pending_[i].next_look > now) wake = std::min(wake, pending_[i].next_look);
      ++i;
    }
    fds.assign({{fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}});
    for (size_t i = 0; i < pending_.size(); ++i) {
      // One waiting out its backoff is still watched for hanging up: its
      // descriptor must not count against its uid a moment longer.
      const short events = pending_[i].next_look > now ? POLLRDHUP : POLLIN | POLLRDHUP;
      fds.push_back({pending_[i].fd.get(), events, 0});
    }
    int timeout_ms = -1;
    if (wake != Clock::time_point::max()) {
      timeout_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(wake - now).count());
    }
    int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "poll");
    }
    if (fds[1].revents) return absl::CancelledError("listener stopped");
    // Connections whose preface may have come, latest first so that
    // removing one leaves the others' indexes valid.
    for (size_t k = pending_.size(); k-- > 0;) {
      if (fds[2 + k].revents == 0) continue;
      Pending& p = pending_[k];
      if (fds[2 + k].revents & (POLLRDHUP | POLLHUP | POLLERR)) {  // the peer is gone, whatever it sent
        pending_[k] = std::move(pending_.back());
        pending_.pop_back();
        continue;
      }
      char head[kPrefaceSize];
      ssize_t got = ::recv(p.fd.get(), head, sizeof head, MSG_PEEK | MSG_DONTWAIT);
      if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      const bool matches = got > 0 && std::memcmp(head, kPreface, static_cast<size_t>(got)) == 0;
      if (got == static_cast<ssize_t>(kPrefaceSize) && matches) {
        UniqueFd ready = std::move(p.fd);
        pending_[k] = std::move(pending_.back());
        pending_.pop_back();
        return ready;
      }
      if (matches) {
        p.backoff = std::min(kMaxBackoff, p.backoff.count() == 0 ? kFirstBackoff : 2 * p.backoff);
        p.next_look = Clock::now() + p.backoff;  // the rest may be on its way
        continue;
      }
      pending_[k] = std::move(pending_.back());  // closed, failed, or not HTTP/2
      pending_.pop_back();
    }
    if (fds[0].revents == 0) continue;
    int client = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        ::usleep(10000);  // out of descriptors: back off, keep serving
        continue;
      }
      return ErrnoStatus(errno, "accept");
    }
    UniqueFd accepted(client);
    if (!admit(accepted.get())) continue;  // closed here
    const auto t = Clock::now();
    pending_.push_back({std::move(accepted), t + handshake_timeout, t});
  }
}

void UnixListener::Stop() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
}

}  // namespace zerocopy::daemon
