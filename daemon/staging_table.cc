#include "staging_table.h"

#include "absl/strings/str_cat.h"
#include "zerocopy/byte_size.h"

namespace zerocopy::daemon {

Staging* StagingTable::Find(const std::string& id) {
  auto it = staging_.find(id);
  return it == staging_.end() ? nullptr : &it->second;
}

void StagingTable::Add(Staging staging) {
  bytes_ += staging.manifest.total_size();
  std::string id = staging.id;
  staging_.emplace(std::move(id), std::move(staging));
}

void StagingTable::Remove(const std::string& id) {
  auto it = staging_.find(id);
  if (it == staging_.end()) return;
  bytes_ -= it->second.manifest.total_size();
  staging_.erase(it);
}

absl::Status StagingTable::CheckQuota(const Peer& peer, uint64_t size, uint64_t manifest_bytes,
                                      const StagingLimits& limits) const {
  uint32_t count = 0;
  uint64_t bytes = 0, held = 0;
  for (const auto& [id, s] : staging_) {
    if (s.peer.known == peer.known && s.peer.uid == peer.uid) {
      ++count;
      bytes += s.manifest.total_size();
      held += s.manifest_bytes;
    }
  }
  if (held + manifest_bytes > limits.manifest_bytes_per_uid) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid ", peer.uid, "'s uncommitted manifests would take ", FormatBytes(held + manifest_bytes),
                     " of the daemon's memory, over the ", FormatBytes(limits.manifest_bytes_per_uid),
                     " one user may (max_staging_manifest_bytes_per_uid)"));
  }
  if (count >= limits.per_uid) {
    return absl::ResourceExhaustedError(absl::StrCat("uid ", peer.uid, " already holds ", count,
                                                     " uncommitted models (max_staging_per_uid): commit or abort "
                                                     "some first"));
  }
  if (bytes + size > limits.bytes_per_uid) {
    return absl::ResourceExhaustedError(
        absl::StrCat("uid ", peer.uid, "'s uncommitted models would reserve ", FormatBytes(bytes + size), ", over the ",
                     FormatBytes(limits.bytes_per_uid), " one user may (max_staging_bytes_per_uid)"));
  }
  return absl::OkStatus();
}

const Staging* StagingTable::TransferOf(const std::string& expected_digest) const {
  if (expected_digest.empty()) return nullptr;
  for (const auto& [id, s] : staging_) {
    if (s.expected_digest == expected_digest) return &s;
  }
  return nullptr;
}

std::vector<std::string> StagingTable::RemoveIf(const std::function<bool(const Staging&)>& drop) {
  std::vector<std::string> removed;
  for (auto it = staging_.begin(); it != staging_.end();) {
    if (!it->second.committing && drop(it->second)) {
      bytes_ -= it->second.manifest.total_size();
      removed.push_back(it->first);
      it = staging_.erase(it);
    } else {
      ++it;
    }
  }
  return removed;
}

}  // namespace zerocopy::daemon
