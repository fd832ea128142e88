// IncomingModel: a model whose digest and manifest are known, arriving in
// pieces (a pull from another node's daemon). It owns a staging segment of
// this node's daemon, reserved for that digest: while it lives no other
// process of the node can start the same transfer (they get ALREADY_EXISTS
// from Client::Receive and wait for the model to appear).
//
// Write the segment's bytes (the source segment's, padding included) in any
// order, then Commit: the daemon hashes the file and keeps it only if it
// is the expected digest, so a transfer that altered a byte commits
// nothing. Destroying an uncommitted IncomingModel aborts it (the staging
// file goes); if the process dies instead, the daemon reclaims it at the
// next CreateModel on the node (a waiter's retry is one).
//
// Pieces that came through other nodes (relays) are checked before they
// are written: SetLeaves gives the model's leaf digests (digest.h), which
// must combine with the manifest into the expected digest, and from then
// on every Write must cover whole leaves and match them, or nothing of it
// is written (DATA_LOSS). The commit's whole-file check stays.
//
// Thread safety: Write may be called from several threads at once (for
// disjoint ranges, or the bytes are undefined); Commit, Abort and
// SetLeaves wait for the writes under way and exclude new ones. Not
// destruction: the owner destroys it once nothing else uses it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "zerocopy/digest.h"
#include "zerocopy/unique_fd.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

class Client;

class IncomingModel {
 public:
  IncomingModel(const IncomingModel&) = delete;
  IncomingModel& operator=(const IncomingModel&) = delete;
  ~IncomingModel();

  const std::string& digest() const { return digest_; }
  const std::string& staging_id() const { return staging_id_; }
  // Segment bytes to write (the manifest's total_size).
  uint64_t size() const { return layout_.total_size(); }
  // The manifest with the daemon's layout (storage offsets).
  const v1::Manifest& layout() const { return layout_; }
  // The staging file's path: other processes of the node (a relay serving
  // the pieces written so far) open it read-only by this path.
  const std::string& path() const { return path_; }

  // From now on every Write is checked against these leaves (EncodeLeaves
  // bytes). Errors: INVALID_ARGUMENT (not the model's number of leaves),
  // DATA_LOSS (they and the manifest do not make the expected digest),
  // FAILED_PRECONDITION after Commit or Abort.
  absl::Status SetLeaves(std::string_view leaves);

  // Copies `n` bytes to segment offset `offset` (pwrite: the kernel
  // allocates the pages as it fills them). Errors: INVALID_ARGUMENT past
  // the end (or, after SetLeaves, not whole leaves), DATA_LOSS (after
  // SetLeaves: the bytes are not the model's; nothing was written),
  // FAILED_PRECONDITION after Commit or Abort, RESOURCE_EXHAUSTED when the
  // file system is full.
  absl::Status Write(uint64_t offset, const void* data, uint64_t n);

  // Seals the segment and commits it under the expected digest, recording
  // `origin`. Errors: those of CommitModel (INVALID_ARGUMENT when the bytes
  // are not the expected digest: nothing is committed), FAILED_PRECONDITION
  // when already committed or aborted.
  absl::StatusOr<v1::ModelInfo> Commit(const v1::Origin& origin);

  // Gives the staging segment back now (the destructor does it otherwise).
  void Abort();

 private:
  friend class Client;
  IncomingModel(std::shared_ptr<Client> client, std::string digest, std::string staging_id, v1::Manifest layout,
                UniqueFd file, std::string path)
      : client_(std::move(client)),
        digest_(std::move(digest)),
        staging_id_(std::move(staging_id)),
        layout_(std::move(layout)),
        path_(std::move(path)),
        file_(std::move(file)) {}

  const std::shared_ptr<Client> client_;
  const std::string digest_;
  const std::string staging_id_;
  const v1::Manifest layout_;
  const std::string path_;
  // Writers share it, Commit/Abort/SetLeaves hold it alone.
  mutable absl::Mutex mu_;
  UniqueFd file_ ABSL_GUARDED_BY(mu_);                // the staging file, written with pwrite (never mapped)
  bool done_ ABSL_GUARDED_BY(mu_) = false;            // committed or aborted
  std::vector<Hash128> leaves_ ABSL_GUARDED_BY(mu_);  // empty: writes unchecked
};

}  // namespace zerocopy
