// ModelRegistry: the daemon's state and rules, free of gRPC. It owns the
// committed models by digest (with their pins, publisher and origin) and
// the persisted catalog, and orchestrates the pieces each concept lives
// in: names and their owners (name_table.h), staging reservations and
// their per-user limits (staging_table.h), the host budget's LRU eviction
// (eviction.h), sessions and their leases (session_table.h, lease.h), and
// the GPU copies (device_pool.h).
//
// Thread safety: every public method may be called from any thread. One
// mutex guards the models and the tables above; slow work (file creation,
// hashing, unlink, uploads) runs outside it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "device_pool.h"
#include "ids.h"
#include "lease.h"
#include "name_table.h"
#include "peer.h"
#include "segment_store.h"
#include "session_table.h"
#include "staging_table.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

struct RegistryOptions {
  uint64_t host_budget = 0;
  uint64_t tmpfs_reserve = 0;
  unsigned hash_threads = 0;
  std::vector<uint32_t> admin_uids;  // empty and admin_gids empty: anyone
  std::vector<uint32_t> admin_gids;
  // Per uid, before anything is committed (config.h).
  uint32_t max_tensors = 262144;
  StagingLimits staging;
  int64_t staging_idle_ms = 600000;
};

// What GetModel answers, with the leases it took for the caller's
// session: handed over when the answer reaches the caller, given back
// (when destroyed) otherwise.
struct LeasedModel {
  v1::GetModelResponse response;
  Lease host;
  Lease device;
};

class ModelRegistry {
 public:
  // The most digests a GetModel may list in manifests_held.
  static constexpr int kMaxManifestsHeld = 64;
  // `devices`: the GPU copies (null: GPU sharing off).
  ModelRegistry(std::unique_ptr<SegmentStore> store, RegistryOptions options,
                std::unique_ptr<DevicePool> devices = nullptr);

  // Re-adopts the segments SegmentStore::Recover accepted and the tags and
  // pins of the catalog (dropping those whose model is gone).
  void Adopt(const SegmentStore::RecoveryReport& report);

  // Errors: INVALID_ARGUMENT (manifest, name, expected digest; a manifest
  // with neither tensors nor metadata; more than max_tensors tensors),
  // RESOURCE_EXHAUSTED (budget or file system full even after evicting what
  // may be evicted; the caller's uid already holds max_staging_per_uid
  // staging models or max_staging_bytes_per_uid bytes of them), ALREADY_EXISTS (with expected_digest: the model is here
  // already, or a live process is transferring it).
  absl::StatusOr<v1::CreateModelResponse> Create(const v1::CreateModelRequest& request, const Peer& peer);
  // Errors: NOT_FOUND (unknown staging id), PERMISSION_DENIED (another
  // user's staging model), INVALID_ARGUMENT (digest mismatch, or the bytes
  // are not the expected digest of a transfer, or an oversized origin; the
  // staging file is dropped), FAILED_PRECONDITION (file size changed).
  absl::StatusOr<v1::CommitModelResponse> Commit(const v1::CommitModelRequest& request, const Peer& peer);
  // Errors: NOT_FOUND, PERMISSION_DENIED.
  absl::Status Abort(const v1::AbortModelRequest& request, const Peer& peer);
  // Errors: INVALID_ARGUMENT (bad ref, bad GPU UUID, more than
  // kMaxManifestsHeld held manifests, or any on a GPU request), NOT_FOUND,
  // FAILED_PRECONDITION (lease or GPU on an unknown session; the daemon
  // sees no such GPU), and for gpu_uuid those of DevicePool::Acquire:
  // UNIMPLEMENTED (no GPU support), RESOURCE_EXHAUSTED (GPU budget).
  // `mode` applies to the device copy (DevicePool::Acquire): kLeaseOnly
  // answers DevicePool::WouldUpload() rather than upload, taking no lease.
  absl::StatusOr<LeasedModel> Get(const v1::GetModelRequest& request, const Peer& peer,
                                  DevicePool::Mode mode = DevicePool::Mode::kMayUpload);
  // Errors: NOT_FOUND (no such session or lease). With gpu_uuid: the
  // device lease.
  absl::Status Release(const v1::ReleaseModelRequest& request, const Peer& peer);
  v1::ListModelsResponse List();
  // Errors: NOT_FOUND, FAILED_PRECONDITION (pinned, without force),
  // PERMISSION_DENIED (not an admin).
  absl::StatusOr<v1::DeleteModelResponse> Delete(const v1::DeleteModelRequest& request, const Peer& peer);
  // Errors: INVALID_ARGUMENT (name, digest), NOT_FOUND, PERMISSION_DENIED.
  absl::StatusOr<v1::TagModelResponse> Tag(const v1::TagModelRequest& request, const Peer& peer);
  // Errors: NOT_FOUND, PERMISSION_DENIED.
  absl::StatusOr<v1::PinModelResponse> SetPinned(const v1::PinModelRequest& request, bool pinned, const Peer& peer);
  v1::GetStatsResponse Stats();

  uint64_t OpenSession(const Peer& peer);
  // Releases every lease of the session. Unknown ids are ignored.
  void CloseSession(uint64_t session_id);

 private:
  friend class Lease;  // gives leases back through ReturnLease
  struct Model {
    std::string digest;
    std::shared_ptr<const v1::Manifest> manifest;
    // `manifest` serialized, made by the first GetModel that asks for it
    // (manifest_as_bytes) and sent as is from then on.
    std::shared_ptr<const std::string> manifest_bytes;
    // Its leaf digests (EncodeLeaves), from the commit's hash; made by the
    // first GetModel with_leaves for a model adopted from an older record.
    std::shared_ptr<const std::string> leaves;
    std::string path;
    uint64_t size = 0;
    int64_t created_ms = 0;
    int64_t last_used_ms = 0;
    bool pinned = false;
    uint32_t leases = 0;  // sessions holding a host lease on it
    v1::Origin origin;
    std::optional<uint32_t> publisher_uid;  // unset: committed before the daemon recorded it
    std::optional<uint32_t> publisher_gid;
  };

  // A committed model as its record describes it, its segment at `path`.
  static Model ModelFromRecord(const v1::ModelRecord& record, std::string path);
  // Gives back one lease of the session (host, or on `gpu_uuid`'s copy).
  // NOT_FOUND when the session or the lease is gone.
  absl::Status ReturnLease(uint64_t session_id, const std::string& digest, const std::string& gpu_uuid);
  absl::Status ReturnLeaseLocked(Session& session, const std::string& digest, const std::string& gpu_uuid)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Model*> Resolve(const std::string& ref) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::ModelInfo Info(const Model& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t UsedBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a model from the maps (the caller unlinks its file). An
  // eviction keeps its names (they still point at its digest and belong to
  // their owners, so nobody else can take them over); a deletion removes
  // them.
  enum class Names { kKeep, kRemove };
  void EraseModel(const std::string& digest, Names names) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes room for `size` more bytes within the host budget and on the
  // tmpfs (`free_bytes` free, beside its reserve) by evicting least
  // recently used models neither pinned nor leased; their digests go to
  // `evicted`. RESOURCE_EXHAUSTED, saying what holds the rest, when that
  // is not enough.
  absl::Status MakeRoom(uint64_t size, const absl::StatusOr<uint64_t>& free_bytes, std::vector<std::string>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveCatalog() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the staging models of publishers that exited, and those not
  // written for staging_idle_ms; returns their ids (files to remove).
  std::vector<std::string> ReclaimDeadStagings() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK unless `expected_digest` (of a transfer) is here already or is being
  // transferred by a staging model: ALREADY_EXISTS then. "" is always OK.
  absl::Status ClaimTransfer(const std::string& expected_digest) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<SegmentStore> store_;
  const RegistryOptions options_;
  const AdminPolicy admins_;
  const std::unique_ptr<DevicePool> devices_;
  const int64_t started_ms_;

  mutable absl::Mutex mu_;
  std::unordered_map<std::string, Model> models_ ABSL_GUARDED_BY(mu_);
  uint64_t committed_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  NameTable names_ ABSL_GUARDED_BY(mu_);
  StagingTable staging_ ABSL_GUARDED_BY(mu_);
  SessionTable sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_evicted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pulls_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_pulled_ ABSL_GUARDED_BY(mu_) = 0;
  // Commits by origin kind (a closed set: clients choose the kind).
  std::map<std::string, v1::PublishStats> publishes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zerocopy::daemon
