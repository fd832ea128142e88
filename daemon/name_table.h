// NameTable: the model names of a node and who owns each. A name points at
// a digest, which may have been evicted: the name stays, with its owner,
// so that nobody else can take it over (SECURITY.md). Persisted in the
// catalog.
//
// Thread safety: none; the registry's mutex guards it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "peer.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

class NameTable {
 public:
  // The digest `name` points at; null if there is no such name.
  const std::string* Find(const std::string& name) const;
  // The uid that created `name`; none for a name created before owners
  // were kept (or none at all).
  std::optional<uint32_t> Owner(const std::string& name) const;
  // Whether `peer` may move or remove `name`: its owner, root, or an admin
  // (a name without an owner, with no admins configured: anyone). OK for
  // a name that does not exist; PERMISSION_DENIED naming the owner
  // otherwise.
  absl::Status CheckMayMove(const std::string& name, const Peer& peer, const AdminPolicy& admins) const;
  // Points `name` at `digest` if `peer` may (CheckMayMove, when the name
  // points elsewhere): the check and the write are one step, so a caller
  // holding the registry's lock once can never move a name that another
  // user took since the caller last looked. A new name belongs to `peer`.
  // Returns what it pointed at before (none: it is new), for Undo.
  // Errors: PERMISSION_DENIED (CheckMayMove's).
  absl::StatusOr<std::optional<std::string>> Set(const std::string& name, const std::string& digest, const Peer& peer,
                                                 const AdminPolicy& admins);
  // Undoes Set: back to `previous`, or gone (with its owner) if none.
  void Undo(const std::string& name, const std::optional<std::string>& previous);
  void Remove(const std::string& name);
  // Removes every name pointing at `digest`.
  void RemoveNamesOf(const std::string& digest);
  std::vector<std::string> NamesOf(const std::string& digest) const;

  // From the catalog (skipping malformed entries), and into it.
  void Load(const v1::CatalogFile& catalog);
  void Save(v1::CatalogFile* catalog) const;

 private:
  std::map<std::string, std::string> digests_;  // name -> digest (possibly evicted)
  std::map<std::string, uint32_t> owners_;      // name -> uid that created it
};

}  // namespace zerocopy::daemon
