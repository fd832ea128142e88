#include "name_table.h"

#include "absl/strings/str_cat.h"
#include "zerocopy/manifest.h"

namespace zerocopy::daemon {

const std::string* NameTable::Find(const std::string& name) const {
  auto it = digests_.find(name);
  return it == digests_.end() ? nullptr : &it->second;
}

std::optional<uint32_t> NameTable::Owner(const std::string& name) const {
  auto it = owners_.find(name);
  if (it == owners_.end()) return std::nullopt;
  return it->second;
}

absl::Status NameTable::CheckMayMove(const std::string& name, const Peer& peer, const AdminPolicy& admins) const {
  if (!digests_.count(name)) return absl::OkStatus();
  const std::optional<uint32_t> owner = Owner(name);
  if (owner && peer.known && peer.uid == *owner) return absl::OkStatus();
  if (peer.known && (peer.uid == 0 || (admins.configured() && admins.Check(peer, "").ok()))) return absl::OkStatus();
  if (!owner) {
    if (!admins.configured()) return absl::OkStatus();
    return admins.Check(peer, absl::StrCat("moving the name '", name, "' (created before names had owners)"));
  }
  return absl::PermissionDeniedError(absl::StrCat("the name '", name, "' belongs to uid ", *owner,
                                                  "; only that user, root or admin_uids/admin_gids may move or "
                                                  "remove it (publish under another name)"));
}

absl::StatusOr<std::optional<std::string>> NameTable::Set(const std::string& name, const std::string& digest,
                                                          const Peer& peer, const AdminPolicy& admins) {
  std::optional<std::string> previous;
  auto it = digests_.find(name);
  if (it != digests_.end()) {
    if (it->second != digest) {
      if (absl::Status may = CheckMayMove(name, peer, admins); !may.ok()) return may;
    }
    previous = it->second;
  } else if (peer.known) {
    owners_[name] = peer.uid;
  }
  digests_[name] = digest;
  return previous;
}

void NameTable::Undo(const std::string& name, const std::optional<std::string>& previous) {
  if (previous) {
    digests_[name] = *previous;
  } else {
    Remove(name);
  }
}

void NameTable::Remove(const std::string& name) {
  digests_.erase(name);
  owners_.erase(name);
}

void NameTable::RemoveNamesOf(const std::string& digest) {
  for (auto it = digests_.begin(); it != digests_.end();) {
    if (it->second == digest) {
      owners_.erase(it->first);
      it = digests_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<std::string> NameTable::NamesOf(const std::string& digest) const {
  std::vector<std::string> names;
  for (const auto& [name, d] : digests_) {
    if (d == digest) names.push_back(name);
  }
  return names;
}

void NameTable::Load(const v1::CatalogFile& catalog) {
  for (const auto& [name, digest] : catalog.tags()) {
    if (IsDigest(digest) && ValidateModelName(name).ok()) digests_[name] = digest;
  }
  for (const auto& [name, uid] : catalog.tag_owners()) {
    if (digests_.count(name)) owners_[name] = uid;
  }
}

void NameTable::Save(v1::CatalogFile* catalog) const {
  for (const auto& [name, digest] : digests_) (*catalog->mutable_tags())[name] = digest;
  for (const auto& [name, uid] : owners_) (*catalog->mutable_tag_owners())[name] = uid;
}

}  // namespace zerocopy::daemon
