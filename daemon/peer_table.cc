#include "peer_table.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iterator>

#include "absl/strings/str_cat.h"

namespace zerocopy::daemon {

void PeerTable::Prune() {
  // Through /proc, never through the descriptors themselves: they belong
  // to gRPC, which may be closing one (and the kernel reusing its number)
  // right now. A live connection's descriptor still names its socket.
  for (auto it = peers_.begin(); it != peers_.end();) {
    char target[64];
    const std::string link = absl::StrCat("/proc/self/fd/", it->first.substr(3));  // key "fd:N"
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target);
    const bool alive =
        n > 0 && std::string(target, static_cast<size_t>(n)) == absl::StrCat("socket:[", it->second.inode, "]");
    it = alive ? std::next(it) : peers_.erase(it);
  }
}

absl::Status PeerTable::Admit(int fd) {
  Entry entry;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    entry.peer.pid = cred.pid;
    entry.peer.uid = cred.uid;
    entry.peer.gid = cred.gid;
    entry.peer.known = true;
  }
  struct stat st;
  if (::fstat(fd, &st) == 0) entry.inode = st.st_ino;
  const std::string key = absl::StrCat("fd:", fd);
  absl::MutexLock lock(&mu_);
  peers_.erase(key);  // a descriptor gRPC closed and the kernel gave us again
  if (entry.peer.known && entry.peer.uid != 0) {
    auto count = [&] {
      uint32_t mine = 0;
      for (const auto& [k, e] : peers_) mine += e.peer.known && e.peer.uid == entry.peer.uid;
      return mine;
    };
    uint32_t mine = count();
    auto over = [&] { return mine >= limits_.per_uid || (peers_.size() >= limits_.total && mine >= kReserved); };
    if (over()) {
      Prune();  // only now: the table may still hold connections gRPC has closed
      mine = count();
    }
    if (mine >= limits_.per_uid) {
      return absl::ResourceExhaustedError(
          absl::StrCat("uid ", entry.peer.uid, " already has ", mine, " connections (max_connections_per_uid)"));
    }
    if (peers_.size() >= limits_.total && mine >= kReserved) {
      return absl::ResourceExhaustedError(absl::StrCat("the daemon holds ", peers_.size(),
                                                       " connections, its limit; uid ", entry.peer.uid, " has ", mine));
    }
  } else if (peers_.size() >= limits_.total) {
    Prune();  // keeps the table bounded by the live connections
  }
  peers_[key] = entry;
  return absl::OkStatus();
}

Peer PeerTable::Lookup(const std::string& grpc_peer) const {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(grpc_peer);
  return it == peers_.end() ? Peer{} : it->second.peer;
}

}  // namespace zerocopy::daemon
