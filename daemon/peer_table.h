// PeerTable: who is on the other end of each connection the daemon
// accepted, and how many connections each user may hold.
//
// Thread safety: every method may be called from any thread (one mutex).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "peer.h"

namespace zerocopy::daemon {

// SO_PEERCRED of each accepted connection, keyed by the peer string gRPC
// reports for it ("fd:N"): recorded before the connection is handed to
// gRPC, so a live connection always finds its own entry.
// How many connections the daemon keeps: per uid (root is not limited),
// and in all, beyond which only uids holding fewer than
// PeerTable::kReserved are still admitted (so that a user under the cap is
// always served).
struct ConnectionLimits {
  uint32_t per_uid = 256;
  uint32_t total = UINT32_MAX;
};

class PeerTable {
 public:
  using Limits = ConnectionLimits;
  static constexpr uint32_t kReserved = 4;
  PeerTable() = default;
  explicit PeerTable(Limits limits) : limits_(limits) {}

  // Records the connection `fd` if its peer is within the limits.
  // RESOURCE_EXHAUSTED (the caller closes it) otherwise.
  absl::Status Admit(int fd);
  Peer Lookup(const std::string& grpc_peer) const;

 private:
  struct Entry {
    Peer peer;
    ino_t inode = 0;  // of the socket: tells a closed (or reused) descriptor from a live one
  };
  // Drops the entries whose descriptor gRPC has closed since (read from
  // /proc/self/fd, never by touching the descriptors, which gRPC owns).
  void Prune() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Limits limits_{};
  mutable absl::Mutex mu_;
  std::unordered_map<std::string, Entry> peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zerocopy::daemon
