#include "model_registry.h"

#include <optional>

#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>

#include <algorithm>
#include <chrono>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "eviction.h"
#include "failpoint.h"
#include "log.h"
#include "zerocopy/byte_size.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy::daemon {

namespace {

// Frees the device copies let go of under the registry's lock once it is
// released: declared before the lock, destroyed after it.
struct ReapOnExit {
  DevicePool* pool;
  ~ReapOnExit() { pool->Reap(); }
};

}  // namespace

ModelRegistry::ModelRegistry(std::unique_ptr<SegmentStore> store, RegistryOptions options,
                             std::unique_ptr<DevicePool> devices)
    : store_(std::move(store)),
      options_(std::move(options)),
      admins_(options_.admin_uids, options_.admin_gids),
      devices_(devices ? std::move(devices) : std::make_unique<DevicePool>(MakeOffBackend(), DevicePoolOptions{})),
      started_ms_(NowUnixMs()) {}

void ModelRegistry::Adopt(const SegmentStore::RecoveryReport& report) {
  absl::MutexLock lock(&mu_);
  for (const auto& adopted : report.models) {
    Model m = ModelFromRecord(adopted.record, adopted.path);
    committed_bytes_ += m.size;
    models_[m.digest] = std::move(m);
  }
  auto catalog = store_->ReadCatalog();
  if (!catalog.ok()) {
    if (!models_.empty() || !absl::IsNotFound(catalog.status())) {
      Log().warn("catalog unreadable, models kept without tags or pins: {}", catalog.status().ToString());
    }
    if (!absl::IsNotFound(catalog.status())) SaveCatalog();
    return;
  }
  // Names stay with their owners even when their model is gone (evicted,
  // or lost in a crash): loading one says so, and nobody else can take it.
  names_.Load(*catalog);
  for (const auto& digest : catalog->pinned()) {
    auto it = models_.find(digest);
    if (it != models_.end()) it->second.pinned = true;
  }
  SaveCatalog();
}

ModelRegistry::Model ModelRegistry::ModelFromRecord(const v1::ModelRecord& record, std::string path) {
  Model m;
  m.digest = record.digest();
  m.manifest = std::make_shared<v1::Manifest>(record.manifest());
  m.path = std::move(path);
  m.size = m.manifest->total_size();
  m.created_ms = record.created_unix_ms();
  m.last_used_ms = m.created_ms;
  m.origin = record.origin();
  if (record.has_publisher_uid()) m.publisher_uid = record.publisher_uid();
  if (record.has_publisher_gid()) m.publisher_gid = record.publisher_gid();
  if (!record.leaves().empty()) m.leaves = std::make_shared<const std::string>(record.leaves());
  return m;
}

absl::StatusOr<ModelRegistry::Model*> ModelRegistry::Resolve(const std::string& ref) {
  if (ref.empty()) return absl::InvalidArgumentError("model reference is empty: give a name or a digest");
  if (IsDigest(ref)) {
    auto it = models_.find(ref);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("no model with digest ", ref, " on this node"));
    return &it->second;
  }
  ZC_RETURN_IF_ERROR(ValidateModelName(ref));
  const std::string* digest = names_.Find(ref);
  if (digest == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no model named '", ref, "' on this node ('zerocopy preload FILE --name ", ref, "' adds one)"));
  }
  auto it = models_.find(*digest);
  if (it == models_.end()) {
    const std::optional<uint32_t> owner = names_.Owner(ref);
    return absl::NotFoundError(absl::StrCat(
        "model '", ref, "' (digest ", *digest, ") is no longer on this node: evicted; republish or preload it",
        owner ? absl::StrCat(" (the name still belongs to uid ", *owner, ")") : ""));
  }
  return &it->second;
}

v1::ModelInfo ModelRegistry::Info(const Model& m) const {
  v1::ModelInfo info;
  info.set_digest(m.digest);
  for (auto& n : names_.NamesOf(m.digest)) info.add_names(n);
  info.set_size(m.size);
  info.set_tensor_count(static_cast<uint32_t>(m.manifest->tensors_size()));
  info.set_storage_count(static_cast<uint32_t>(m.manifest->storages_size()));
  info.set_pinned(m.pinned);
  info.set_leases(m.leases);
  info.set_segment_path(m.path);
  info.set_huge_pages(store_->huge_pages());
  info.set_created_unix_ms(m.created_ms);
  info.set_last_used_unix_ms(m.last_used_ms);
  info.set_format(m.manifest->format());
  *info.mutable_origin() = m.origin;
  if (m.publisher_uid) info.set_publisher_uid(*m.publisher_uid);
  if (m.publisher_gid) info.set_publisher_gid(*m.publisher_gid);
  for (auto& uuid : devices_->GpusOf(m.digest)) info.add_gpu_uuids(std::move(uuid));
  return info;
}

uint64_t ModelRegistry::UsedBytes() const { return committed_bytes_ + staging_.bytes(); }

void ModelRegistry::EraseModel(const std::string& digest_ref, Names names) {
  const std::string digest = digest_ref;  // the caller's may live in the model erased below
  auto it = models_.find(digest);
  if (it == models_.end()) return;
  committed_bytes_ -= it->second.size;
  sessions_.ForgetModel(digest);
  if (names == Names::kRemove) names_.RemoveNamesOf(digest);
  models_.erase(it);
  devices_->DropModel(digest);
}

void ModelRegistry::SaveCatalog() {
  v1::CatalogFile catalog;
  names_.Save(&catalog);
  for (const auto& [digest, m] : models_) {
    if (m.pinned) catalog.add_pinned(digest);
  }
  absl::Status s = store_->WriteCatalog(catalog);
  if (!s.ok()) Log().error("catalog not saved: {}", s.ToString());
}

absl::Status ModelRegistry::ClaimTransfer(const std::string& expected_digest) const {
  if (expected_digest.empty()) return absl::OkStatus();
  if (models_.count(expected_digest)) {
    return absl::AlreadyExistsError(absl::StrCat("model ", expected_digest, " is already on this node"));
  }
  if (const Staging* s = staging_.TransferOf(expected_digest)) {
    return absl::AlreadyExistsError(absl::StrCat("model ", expected_digest,
                                                 " is being transferred to this node by pid ", s->peer.pid,
                                                 " (staging ", s->id, ")"));
  }
  return absl::OkStatus();
}

std::vector<std::string> ModelRegistry::ReclaimDeadStagings() {
  // A publisher that died mid-publish never commits or aborts: its
  // reservation returns as soon as its process is gone. One that lives on
  // without writing (or a file nobody writes) keeps it staging_idle_ms.
  const int64_t now = NowUnixMs();
  return staging_.RemoveIf([&](const Staging& s) {
    const bool dead = s.peer.known && s.peer.pid > 0 && ::kill(s.peer.pid, 0) != 0 && errno == ESRCH;
    if (dead) return true;
    if (now - s.created_ms < options_.staging_idle_ms) return false;
    auto written = store_->StagingWrittenMs(s.id);
    return !written.ok() || now - *written >= options_.staging_idle_ms;
  });
}

absl::Status ModelRegistry::MakeRoom(uint64_t size, const absl::StatusOr<uint64_t>& free_bytes,
                                     std::vector<std::string>* evicted) {
  const uint64_t budget_short =
      UsedBytes() + size > options_.host_budget ? UsedBytes() + size - options_.host_budget : 0;
  const uint64_t tmpfs_short =
      free_bytes.ok() && *free_bytes < size + options_.tmpfs_reserve ? size + options_.tmpfs_reserve - *free_bytes : 0;
  if (budget_short == 0 && tmpfs_short == 0) return absl::OkStatus();
  std::vector<EvictionCandidate> candidates;
  for (const auto& [digest, m] : models_) {
    if (!m.pinned && m.leases == 0) candidates.push_back({digest, m.size, m.last_used_ms});
  }
  EvictionPlan plan = PlanEviction(std::move(candidates), std::max(budget_short, tmpfs_short));
  if (plan.freeable < budget_short) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model of ", FormatBytes(size), " does not fit the host budget of ", FormatBytes(options_.host_budget), ": ",
        FormatBytes(UsedBytes()), " in use, of which only ", FormatBytes(plan.freeable),
        " is neither pinned, leased nor being published (raise host_budget, or unpin or remove models)"));
  }
  if (plan.freeable < tmpfs_short) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model of ", FormatBytes(size), " does not fit in ", store_->dir(), ": ", FormatBytes(*free_bytes), " free, ",
        FormatBytes(options_.tmpfs_reserve), " kept in reserve, and only ", FormatBytes(plan.freeable),
        " could be evicted (enlarge the tmpfs, e.g. docker --shm-size, or remove models)"));
  }
  for (const std::string& digest : plan.victims) {
    ++evictions_;
    bytes_evicted_ += models_.at(digest).size;
    EraseModel(digest, Names::kKeep);
    store_->RemoveModel(digest);  // under the lock, as in Delete
    evicted->push_back(digest);
  }
  if (!evicted->empty()) {
    SaveCatalog();
    Failpoint("create:evicted");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CreateModelResponse> ModelRegistry::Create(const v1::CreateModelRequest& request, const Peer& peer) {
  ReapOnExit reap{devices_.get()};
  if (request.manifest().tensors_size() == 0 && request.manifest().metadata().empty() &&
      request.manifest().files().empty()) {
    return absl::InvalidArgumentError("the manifest is empty: a model needs tensors, metadata or files");
  }
  if (static_cast<uint64_t>(request.manifest().tensors_size()) > options_.max_tensors) {
    return absl::InvalidArgumentError(absl::StrCat("the model has ", request.manifest().tensors_size(),
                                                   " tensors; this daemon takes at most ", options_.max_tensors,
                                                   " per model (max_tensors)"));
  }
  v1::Manifest manifest = request.manifest();
  ZC_RETURN_IF_ERROR(ValidateManifest(manifest));
  ZC_RETURN_IF_ERROR(AssignOffsets(&manifest));
  if (!request.name().empty()) ZC_RETURN_IF_ERROR(ValidateModelName(request.name()));
  if (request.pin()) ZC_RETURN_IF_ERROR(admins_.Check(peer, "pinning"));
  const std::string& expected = request.expected_digest();
  if (!expected.empty() && !IsDigest(expected)) {
    return absl::InvalidArgumentError("expected_digest must be 32 lowercase hex digits");
  }
  const uint64_t size = manifest.total_size();
  const uint64_t manifest_bytes = manifest.ByteSizeLong();

  std::string id = RandomId();
  std::vector<std::string> evicted, dead_staging;
  absl::Status claimed;
  {
    absl::MutexLock lock(&mu_);
    dead_staging = ReclaimDeadStagings();
    claimed = ClaimTransfer(expected);
  }
  // Reclaimed files go even when this request is refused: a waiter's retry
  // is what clears a transfer whose process died.
  auto& log = Log();
  for (const auto& d : dead_staging) {
    store_->RemoveStaging(d);
    log.info("reclaimed staging={} (its publisher exited, or left it unwritten for staging_idle_seconds)", d);
  }
  ZC_RETURN_IF_ERROR(claimed);
  // Free space is read outside the lock and used inside it: mu_ does not
  // guard the tmpfs (writers fill their files unlocked), so this check is
  // advisory; a full tmpfs surfaces as the writer's ENOSPC or the commit's
  // populate error, never as a SIGBUS.
  const auto free_before = store_->FreeBytes();
  {
    absl::MutexLock lock(&mu_);
    // Checked again under this lock: another claim may have come between.
    ZC_RETURN_IF_ERROR(ClaimTransfer(expected));
    ZC_RETURN_IF_ERROR(staging_.CheckQuota(peer, size, manifest_bytes, options_.staging));
    ZC_RETURN_IF_ERROR(MakeRoom(size, free_before, &evicted));
    Staging staging;
    staging.id = id;
    staging.manifest = manifest;
    staging.name = request.name();
    staging.pin = request.pin();
    staging.peer = peer;
    staging.expected_digest = expected;
    staging.created_ms = NowUnixMs();
    staging.manifest_bytes = manifest_bytes;
    staging_.Add(std::move(staging));
  }
  if (!expected.empty())
    log.info("transfer of digest={} ({}) begins: staging={} pid={}", expected, FormatBytes(size), id, peer.pid);
  for (const auto& digest : evicted) log.info("evicted digest={} to make room for {}", digest, FormatBytes(size));
  auto undo = [&] {
    absl::MutexLock lock(&mu_);
    staging_.Remove(id);
  };
  auto free_bytes = store_->FreeBytes();
  if (free_bytes.ok() && *free_bytes < size + options_.tmpfs_reserve) {
    undo();
    return absl::ResourceExhaustedError(
        absl::StrCat("model of ", FormatBytes(size), " does not fit in ", store_->dir(), ": ", FormatBytes(*free_bytes),
                     " free, ", FormatBytes(options_.tmpfs_reserve),
                     " kept in reserve (enlarge the tmpfs, e.g. docker --shm-size, or remove models)"));
  }
  // Reclaimed between the hold above and this file only if the caller died
  // mid-Create: the file then has no pages and no owner, and the next
  // start's recovery removes it.
  absl::Status created = store_->CreateStaging(id, size);
  if (!created.ok()) {
    undo();
    return created;
  }
  v1::CreateModelResponse response;
  response.set_staging_id(id);
  response.set_segment_path(store_->StagingPath(id));
  *response.mutable_manifest() = std::move(manifest);
  return response;
}

absl::StatusOr<v1::CommitModelResponse> ModelRegistry::Commit(const v1::CommitModelRequest& request, const Peer& peer) {
  v1::Manifest manifest;
  std::string name;
  std::string expected;
  bool pin;
  int64_t created_ms;
  {
    absl::MutexLock lock(&mu_);
    Staging* staging = staging_.Find(request.staging_id());
    if (staging == nullptr || staging->committing) {
      return absl::NotFoundError(
          absl::StrCat("no staging model '", request.staging_id(), "' (already committed, aborted, or never created)"));
    }
    if (!SameOwner(staging->peer, peer)) {
      return absl::PermissionDeniedError("this staging model belongs to another user");
    }
    staging->committing = true;
    manifest = staging->manifest;
    name = staging->name;
    pin = staging->pin;
    expected = staging->expected_digest;
    created_ms = staging->created_ms;
  }
  const std::string& id = request.staging_id();
  const uint64_t size = manifest.total_size();
  // Every exit gives the staging entry back (unless the final step below
  // did, in the same hold as the model appeared) and removes the file
  // (unless that step renamed it into place), after the lock is released.
  bool entry_removed = false;
  bool renamed = false;
  absl::Cleanup finish = [&] {
    if (!entry_removed) {
      absl::MutexLock lock(&mu_);
      staging_.Remove(id);
    }
    if (!renamed) store_->RemoveStaging(id);
  };

  ZC_RETURN_IF_ERROR(ValidateOrigin(request.origin()));
  ZC_ASSIGN_OR_RETURN(UniqueFd fd, store_->SealStaging(id, size));
  std::vector<Hash128> leaves;
  auto digest = SegmentStore::HashSegment(fd.get(), size, manifest, options_.hash_threads, &leaves);
  if (!digest.ok()) return digest.status();
  if (!expected.empty() && *digest != expected) {
    return absl::InvalidArgumentError(absl::StrCat("the transferred bytes hash to ", *digest, ", not to ", expected,
                                                   " as expected; the model was dropped"));
  }
  if (*digest != request.digest()) {
    return absl::InvalidArgumentError(absl::StrCat("digest mismatch: the publisher computed '", request.digest(),
                                                   "' but the segment holds ", *digest, "; the model was dropped"));
  }
  Failpoint("commit:hashed");
  // Held here by the race test: whatever another user does to the name
  // from now on, the check below sees it (security_test.cc).
  Failpoint("commit:naming");

  v1::CommitModelResponse response;
  bool dedup = false;
  absl::MutexLock lock(&mu_);
  // The staging entry (a transfer's claim) goes in the same step as the
  // model appears or the commit fails: a claimant never finds neither.
  staging_.Remove(id);
  entry_removed = true;
  auto existing = models_.find(*digest);
  dedup = existing != models_.end();
  std::optional<std::string> previous;  // what the name pointed at
  if (!name.empty()) {
    // Checked and set in this one hold of the lock: publishing under a
    // name that points elsewhere moves it, its owner's call (or an
    // admin's), as TagModel is. The tag is saved before the segment
    // appears: a crash in between leaves a name to a missing model, which
    // recovery keeps for its owner (loading it says the model is gone).
    ZC_ASSIGN_OR_RETURN(previous, names_.Set(name, *digest, peer, admins_));
    SaveCatalog();
  }
  if (!expected.empty()) {
    ++pulls_;
    bytes_pulled_ += size;
  }
  if (!dedup) {
    v1::ModelRecord record;
    *record.mutable_manifest() = manifest;
    record.set_digest(*digest);
    record.set_leaves(EncodeLeaves(leaves));
    record.set_created_unix_ms(NowUnixMs());
    *record.mutable_origin() = request.origin();
    if (peer.known) {
      record.set_publisher_uid(peer.uid);
      record.set_publisher_gid(peer.gid);
    }
    Failpoint("commit:tagged");
    if (absl::Status s = store_->CommitStaging(id, record); !s.ok()) {
      if (!name.empty()) {
        names_.Undo(name, previous);
        SaveCatalog();
      }
      return s;
    }
    renamed = true;
    Failpoint("commit:renamed");
    Model m = ModelFromRecord(record, store_->SegmentPath(*digest));
    committed_bytes_ += m.size;
    existing = models_.emplace(*digest, std::move(m)).first;
  }
  if (pin) {
    existing->second.pinned = true;
    SaveCatalog();  // a name is saved above, when it is set
  }
  existing->second.last_used_ms = NowUnixMs();
  *response.mutable_model() = Info(existing->second);
  response.set_deduplicated(dedup);
  const std::string& kind = request.origin().kind();
  const std::string origin = kind == "published" || kind == "preloaded" || kind == "pulled" ? kind : "other";
  v1::PublishStats& publishes = publishes_[origin];
  publishes.set_origin(origin);
  publishes.set_commits(publishes.commits() + 1);
  publishes.set_deduplicated(publishes.deduplicated() + (dedup ? 1 : 0));
  publishes.set_bytes(publishes.bytes() + size);
  publishes.set_seconds(publishes.seconds() + static_cast<double>(existing->second.last_used_ms - created_ms) / 1000);
  return response;
}

absl::Status ModelRegistry::Abort(const v1::AbortModelRequest& request, const Peer& peer) {
  {
    absl::MutexLock lock(&mu_);
    const Staging* staging = staging_.Find(request.staging_id());
    if (staging == nullptr || staging->committing) {
      return absl::NotFoundError(absl::StrCat("no staging model '", request.staging_id(), "'"));
    }
    if (!SameOwner(staging->peer, peer)) {
      return absl::PermissionDeniedError("this staging model belongs to another user");
    }
    staging_.Remove(request.staging_id());
  }
  store_->RemoveStaging(request.staging_id());
  return absl::OkStatus();
}

absl::StatusOr<LeasedModel> ModelRegistry::Get(const v1::GetModelRequest& request, const Peer& peer,
                                               DevicePool::Mode mode) {
  ReapOnExit reap{devices_.get()};
  std::shared_ptr<const v1::Manifest> manifest;
  std::shared_ptr<const std::string> manifest_bytes;
  std::shared_ptr<const std::string> leaves;
  LeasedModel leased;
  v1::GetModelResponse& response = leased.response;
  const bool gpu = !request.gpu_uuid().empty();
  if (request.manifests_held_size() > kMaxManifestsHeld) {
    return absl::InvalidArgumentError(
        absl::StrCat("manifests_held lists ", request.manifests_held_size(), " digests; at most ", kMaxManifestsHeld));
  }
  if (gpu && request.manifests_held_size() > 0) {
    return absl::InvalidArgumentError("manifests_held is not for GPU requests");
  }
  std::string digest, path;
  uint64_t size = 0;
  {
    absl::MutexLock lock(&mu_);
    ZC_ASSIGN_OR_RETURN(Model * m, Resolve(request.model().ref()));
    if (request.lease() || gpu) {
      Session* session = sessions_.Find(request.session_id());
      if (session == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(gpu ? "GPU copy" : "lease", " requested on unknown session ",
                                                          request.session_id(), " (open a Session stream first)"));
      }
      if (!SameOwner(session->peer, peer)) {
        return absl::PermissionDeniedError(absl::StrCat("session ", request.session_id(), " belongs to another user"));
      }
      if (request.lease()) {
        if (SessionTable::Take(*session, m->digest)) ++m->leases;
        leased.host = Lease(this, request.session_id(), m->digest);
        Failpoint("get:leased");
      }
    }
    m->last_used_ms = NowUnixMs();
    digest = m->digest;
    path = m->path;
    size = m->size;
    manifest = m->manifest;
    manifest_bytes = m->manifest_bytes;
    leaves = m->leaves;
    *response.mutable_model() = Info(*m);
  }
  if (request.with_leaves()) {
    if (leaves == nullptr) {
      // A model adopted from an older daemon's record: hashed once, outside
      // the lock, and kept (two first requests may both hash it; either
      // copy serves).
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
      std::vector<Hash128> hashed;
      ZC_ASSIGN_OR_RETURN(std::string check,
                          SegmentStore::HashSegment(fd.get(), size, *manifest, options_.hash_threads, &hashed));
      if (check != digest)
        return absl::DataLossError(absl::StrCat("the segment of model ", digest, " no longer hashes to it"));
      leaves = std::make_shared<const std::string>(EncodeLeaves(hashed));
      absl::MutexLock lock(&mu_);
      if (auto m = models_.find(digest); m != models_.end()) m->second.leaves = leaves;
    }
    response.set_leaves(*leaves);
  }
  if (gpu) {
    // Outside the registry's lock: the first request per GPU uploads.
    // `path` is content-addressed: a file still there holds these bytes,
    // and one evicted meanwhile fails to open, cleanly.
    auto host = [path, size]() -> absl::StatusOr<DevicePool::HostBytes> {
      ZC_ASSIGN_OR_RETURN(MappedRegion region, MappedRegion::MapFile(path));
      if (region.size() != size) {
        return absl::DataLossError(absl::StrCat(path, " is ", region.size(), " bytes, not ", size));
      }
      auto keep = std::make_shared<MappedRegion>(std::move(region));
      return DevicePool::HostBytes{keep->data(), keep};
    };
    // On failure the host lease taken above goes back with `leased`.
    ZC_ASSIGN_OR_RETURN(*response.mutable_device(),
                        devices_->Acquire(request.session_id(), digest, request.gpu_uuid(), size, host, mode));
    leased.device = Lease(this, request.session_id(), digest, request.gpu_uuid());
    Failpoint("get:device");  // the device copy leased, not yet answered (tests)
    absl::MutexLock lock(&mu_);
    if (sessions_.Find(request.session_id()) == nullptr) {
      // The session ended while the copy was made: CloseSession ran before
      // this lease existed, so it must not outlive the session.
      (void)devices_->Release(request.session_id(), digest, request.gpu_uuid());
      leased.device.HandOver();  // released just now
      return absl::FailedPreconditionError(
          absl::StrCat("unknown session ", request.session_id(), " (it ended while the device copy was made)"));
    }
    auto m = models_.find(digest);
    if (m == models_.end()) {
      devices_->DropModel(digest);  // removed meanwhile: its copy goes with its last lease
    } else {
      *response.mutable_model() = Info(m->second);  // now with this GPU
    }
  }
  // Outside the lock: a manifest can be large.
  if (std::find(request.manifests_held().begin(), request.manifests_held().end(), digest) !=
      request.manifests_held().end()) {
    response.set_manifest_omitted(true);  // the caller has it (a digest covers its manifest)
    return leased;
  }
  if (!request.manifest_as_bytes()) {
    *response.mutable_manifest() = *manifest;
    return leased;
  }
  if (manifest_bytes == nullptr) {
    // The first such request for this model: serialized once, kept with it
    // (a model's manifest never changes; two first requests may both make
    // it, and either copy serves).
    manifest_bytes = std::make_shared<const std::string>(manifest->SerializeAsString());
    absl::MutexLock lock(&mu_);
    if (auto m = models_.find(digest); m != models_.end() && m->second.manifest == manifest) {
      m->second.manifest_bytes = manifest_bytes;
    }
  }
  response.set_manifest_bytes(*manifest_bytes);
  return leased;
}

absl::Status ModelRegistry::Release(const v1::ReleaseModelRequest& request, const Peer& peer) {
  ReapOnExit reap{devices_.get()};
  absl::MutexLock lock(&mu_);
  Session* session = sessions_.Find(request.session_id());
  if (session == nullptr) return absl::NotFoundError(absl::StrCat("no session ", request.session_id()));
  if (!SameOwner(session->peer, peer)) {
    return absl::PermissionDeniedError(absl::StrCat("session ", request.session_id(), " belongs to another user"));
  }
  return ReturnLeaseLocked(*session, request.digest(), request.gpu_uuid());
}

absl::Status ModelRegistry::ReturnLease(uint64_t session_id, const std::string& digest, const std::string& gpu_uuid) {
  ReapOnExit reap{devices_.get()};
  absl::MutexLock lock(&mu_);
  Session* session = sessions_.Find(session_id);
  if (session == nullptr) return absl::NotFoundError(absl::StrCat("no session ", session_id));
  return ReturnLeaseLocked(*session, digest, gpu_uuid);
}

// Leases are counted per (session, digest), without a generation: a stale
// give-back after a delete and a recommit of the same bytes can only make
// the model evictable early, and the client's mapping survives an unlink.
absl::Status ModelRegistry::ReturnLeaseLocked(Session& session, const std::string& digest,
                                              const std::string& gpu_uuid) {
  if (!gpu_uuid.empty()) return devices_->Release(session.id, digest, gpu_uuid);
  ZC_ASSIGN_OR_RETURN(bool last, SessionTable::Give(session, digest));
  if (last) {
    auto m = models_.find(digest);
    if (m != models_.end() && m->second.leases > 0) --m->second.leases;
  }
  return absl::OkStatus();
}

v1::ListModelsResponse ModelRegistry::List() {
  v1::ListModelsResponse response;
  absl::MutexLock lock(&mu_);
  for (const auto& [digest, m] : models_) *response.add_models() = Info(m);
  std::sort(response.mutable_models()->begin(), response.mutable_models()->end(),
            [](const v1::ModelInfo& a, const v1::ModelInfo& b) { return a.created_unix_ms() < b.created_unix_ms(); });
  return response;
}

absl::StatusOr<v1::DeleteModelResponse> ModelRegistry::Delete(const v1::DeleteModelRequest& request, const Peer& peer) {
  ReapOnExit reap{devices_.get()};
  v1::DeleteModelResponse response;
  // One hold: a model found here is the one removed (an eviction between
  // two holds would turn the removal of its name into NOT_FOUND).
  absl::MutexLock lock(&mu_);
  // A name whose model is gone (evicted) is removed by its owner: the
  // only way to free it for someone else, short of an admin.
  const std::string& ref = request.model().ref();
  const std::string* named = names_.Find(ref);
  if (named != nullptr && !models_.count(*named)) {
    ZC_RETURN_IF_ERROR(names_.CheckMayMove(ref, peer, admins_));
    response.set_digest(*named);
    names_.Remove(ref);
    SaveCatalog();
    return response;
  }
  ZC_RETURN_IF_ERROR(admins_.Check(peer, "deleting models"));
  ZC_ASSIGN_OR_RETURN(Model * m, Resolve(ref));
  if (m->pinned && !request.force()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", m->digest, " is pinned: unpin it first or delete with force"));
  }
  response.set_digest(m->digest);
  EraseModel(m->digest, Names::kRemove);
  SaveCatalog();
  // Under the lock: a commit of the same bytes must not rename its new
  // file into place before this unlink. Processes that mapped it keep
  // their mapping; the memory returns when the last one unmaps.
  store_->RemoveModel(response.digest());
  return response;
}

absl::StatusOr<v1::TagModelResponse> ModelRegistry::Tag(const v1::TagModelRequest& request, const Peer& peer) {
  ZC_RETURN_IF_ERROR(ValidateModelName(request.name()));
  absl::MutexLock lock(&mu_);
  ZC_ASSIGN_OR_RETURN(Model * m, Resolve(request.model().ref()));
  ZC_RETURN_IF_ERROR(names_.Set(request.name(), m->digest, peer, admins_).status());
  SaveCatalog();
  v1::TagModelResponse response;
  *response.mutable_model() = Info(*m);
  return response;
}

absl::StatusOr<v1::PinModelResponse> ModelRegistry::SetPinned(const v1::PinModelRequest& request, bool pinned,
                                                              const Peer& peer) {
  ZC_RETURN_IF_ERROR(admins_.Check(peer, pinned ? "pinning" : "unpinning"));
  absl::MutexLock lock(&mu_);
  ZC_ASSIGN_OR_RETURN(Model * m, Resolve(request.model().ref()));
  m->pinned = pinned;
  SaveCatalog();
  v1::PinModelResponse response;
  *response.mutable_model() = Info(*m);
  return response;
}

v1::GetStatsResponse ModelRegistry::Stats() {
  v1::GetStatsResponse stats;
  stats.set_segment_dir(store_->dir());
  auto free_bytes = store_->FreeBytes();
  stats.set_segment_dir_free(free_bytes.ok() ? *free_bytes : 0);
  stats.set_huge_pages(store_->huge_pages());
  stats.set_pid(::getpid());
  stats.set_started_unix_ms(started_ms_);
  absl::MutexLock lock(&mu_);
  stats.set_bytes_used(UsedBytes());
  stats.set_bytes_staging(staging_.bytes());
  stats.set_pulls(pulls_);
  stats.set_bytes_pulled(bytes_pulled_);
  stats.set_host_budget(options_.host_budget);
  stats.set_models(models_.size());
  stats.set_models_pinned(std::count_if(models_.begin(), models_.end(), [](const auto& m) { return m.second.pinned; }));
  for (const auto& [origin, publishes] : publishes_) *stats.add_publishes() = publishes;
  stats.set_evictions(evictions_);
  stats.set_bytes_evicted(bytes_evicted_);
  sessions_.Describe(&stats);
  stats.set_gpu_backend(devices_->backend_name());
  for (auto& g : devices_->Stats()) *stats.add_gpus() = std::move(g);
  return stats;
}

uint64_t ModelRegistry::OpenSession(const Peer& peer) {
  absl::MutexLock lock(&mu_);
  return sessions_.Open(peer, NowUnixMs());
}

void ModelRegistry::CloseSession(uint64_t session_id) {
  ReapOnExit reap{devices_.get()};
  absl::MutexLock lock(&mu_);
  std::optional<Session> closed = sessions_.Close(session_id);
  if (!closed) return;
  for (const auto& [digest, count] : closed->leases) {
    auto m = models_.find(digest);
    if (m != models_.end() && m->second.leases > 0) --m->second.leases;
  }
  devices_->CloseSession(session_id);
}

void Lease::GiveBack() {
  if (registry_ == nullptr) return;
  // NOT_FOUND: the session ended meanwhile, which gave it back already.
  (void)registry_->ReturnLease(session_id_, digest_, gpu_uuid_);
  registry_ = nullptr;
}

}  // namespace zerocopy::daemon
