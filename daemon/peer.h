// Who is calling (SO_PEERCRED of the connection) and what the config lets
// them do: the rules every part of the daemon applies to a caller.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace zerocopy::daemon {

struct Peer {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  bool known = false;
};

// Whether `peer` may act on what `owner` made (a staging model, a session):
// the same uid, or root. Fails closed when either is unknown.
bool SameOwner(const Peer& owner, const Peer& peer);

// admin_uids / admin_gids of the config: who may delete, pin and move
// other users' names. With neither configured, everyone may.
class AdminPolicy {
 public:
  AdminPolicy(std::vector<uint32_t> uids, std::vector<uint32_t> gids)
      : uids_(std::move(uids)), gids_(std::move(gids)) {}

  bool configured() const { return !uids_.empty() || !gids_.empty(); }
  // OK for root, a listed uid or gid, or anyone when none is configured;
  // PERMISSION_DENIED naming `what` otherwise.
  absl::Status Check(const Peer& peer, absl::string_view what) const;

 private:
  std::vector<uint32_t> uids_;
  std::vector<uint32_t> gids_;
};

}  // namespace zerocopy::daemon
