#include "peer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace zerocopy::daemon {

bool SameOwner(const Peer& owner, const Peer& peer) {
  return owner.known && peer.known && (peer.uid == owner.uid || peer.uid == 0);
}

absl::Status AdminPolicy::Check(const Peer& peer, absl::string_view what) const {
  if (!configured()) return absl::OkStatus();
  if (peer.known && peer.uid == 0) return absl::OkStatus();
  if (peer.known && (std::find(uids_.begin(), uids_.end(), peer.uid) != uids_.end() ||
                     std::find(gids_.begin(), gids_.end(), peer.gid) != gids_.end())) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(what,
                                                  " is limited to admin_uids/admin_gids in the daemon's config; uid ",
                                                  peer.uid, " gid ", peer.gid, " is not among them"));
}

}  // namespace zerocopy::daemon
