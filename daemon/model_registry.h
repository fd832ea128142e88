// ModelRegistry: the daemon's state and rules, free of gRPC. Models by
// digest, tags, staging reservations, the host budget and LRU eviction,
// sessions and their leases, pins, and the persisted catalog.
//
// Thread safety: every public method may be called from any thread. One
// mutex guards the maps; slow work (fallocate, hashing, unlink) runs
// outside it.
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
#include "segment_store.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

// Who is calling, from SO_PEERCRED of the connection.
struct Peer {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  bool known = false;
};

struct RegistryOptions {
  uint64_t host_budget = 0;
  uint64_t tmpfs_reserve = 0;
  unsigned hash_threads = 0;
  std::vector<uint32_t> admin_uids;  // empty and admin_gids empty: anyone
  std::vector<uint32_t> admin_gids;
  // Per uid, before anything is committed (config.h).
  uint32_t max_tensors = 262144;
  uint32_t max_staging_per_uid = 16;
  uint64_t max_staging_bytes_per_uid = UINT64_MAX;
  uint64_t max_staging_manifest_bytes_per_uid = 64ull << 20;
  int64_t staging_idle_ms = 600000;
};

class ModelRegistry {
 public:
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
  // Errors: INVALID_ARGUMENT (bad ref, bad GPU UUID), NOT_FOUND,
  // FAILED_PRECONDITION (lease or GPU on an unknown session; the daemon
  // sees no such GPU), and for gpu_uuid those of DevicePool::Acquire:
  // UNIMPLEMENTED (no GPU support), RESOURCE_EXHAUSTED (GPU budget).
  // `mode` applies to the device copy (DevicePool::Acquire): kLeaseOnly
  // answers DevicePool::WouldUpload() rather than upload, taking no lease.
  absl::StatusOr<v1::GetModelResponse> Get(const v1::GetModelRequest& request, const Peer& peer,
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
  struct Model {
    std::string digest;
    std::shared_ptr<const v1::Manifest> manifest;
    std::string path;
    uint64_t size = 0;
    int64_t created_ms = 0;
    uint64_t manifest_bytes = 0;  // what its manifest costs the daemon to keep
    int64_t last_used_ms = 0;
    bool pinned = false;
    uint32_t leases = 0;
    v1::Origin origin;
    std::optional<uint32_t> publisher_uid;  // unset: committed before the daemon recorded it
    std::optional<uint32_t> publisher_gid;
  };
  struct Staging {
    std::string id;
    v1::Manifest manifest;
    std::string name;
    bool pin = false;
    Peer peer;
    bool committing = false;
    std::string expected_digest;  // a transfer: see CreateModelRequest
    int64_t created_ms = 0;
    uint64_t manifest_bytes = 0;  // what its manifest costs the daemon to keep
  };
  struct Session {
    uint64_t id = 0;
    Peer peer;
    int64_t opened_ms = 0;
    std::map<std::string, uint32_t> leases;  // digest -> count
  };

  absl::Status CheckAdmin(const Peer& peer, absl::string_view what) const;
  // Whether `peer` may move or remove the name: the uid that created it,
  // root, or a configured admin (a name created before owners were kept,
  // with no admins configured: anyone, as before). PERMISSION_DENIED
  // naming the owner otherwise. OK for a name that does not exist.
  absl::Status CheckNameOwner(const std::string& name, const Peer& peer) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Points `name` at `digest`; a new name belongs to `peer`.
  void SetTag(const std::string& name, const std::string& digest, const Peer& peer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `peer` may act on what `owner` made (a staging model, a
  // session): the same uid, or root. Fails closed when either is unknown.
  static bool SameOwner(const Peer& owner, const Peer& peer);
  absl::StatusOr<Model*> Resolve(const std::string& ref) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::ModelInfo Info(const Model& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> NamesOf(const std::string& digest) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t UsedBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a model from the maps (the caller unlinks its file). An
  // eviction keeps its names (they still point at its digest and belong to
  // their owners, so nobody else can take them over); a deletion removes
  // them.
  enum class Names { kKeep, kRemove };
  void EraseModel(const std::string& digest, Names names) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveCatalog() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the staging models of publishers that exited, and those not
  // written for staging_idle_ms; their files go to `remove`.
  void ReclaimDeadStagings(std::vector<std::string>* remove) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // RESOURCE_EXHAUSTED when `peer` may not reserve one more staging model
  // of `size` bytes whose manifest takes `manifest_bytes` of memory.
  absl::Status CheckStagingQuota(const Peer& peer, uint64_t size, uint64_t manifest_bytes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK unless `expected_digest` (of a transfer) is here already or is being
  // transferred by a staging model: ALREADY_EXISTS then. "" is always OK.
  absl::Status ClaimTransfer(const std::string& expected_digest) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<SegmentStore> store_;
  const RegistryOptions options_;
  const std::unique_ptr<DevicePool> devices_;
  const int64_t started_ms_;

  mutable absl::Mutex mu_;
  std::unordered_map<std::string, Model> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> tags_ ABSL_GUARDED_BY(mu_);  // name -> digest (possibly evicted)
  std::map<std::string, uint32_t> tag_owners_ ABSL_GUARDED_BY(mu_);  // name -> uid that created it
  std::unordered_map<std::string, Staging> staging_ ABSL_GUARDED_BY(mu_);
  uint64_t staging_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t committed_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<uint64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_evicted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pulls_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_pulled_ ABSL_GUARDED_BY(mu_) = 0;
};

// Milliseconds since the Unix epoch.
int64_t NowUnixMs();

// 32 hex digits from the kernel's random source.
std::string RandomId();

}  // namespace zerocopy::daemon
