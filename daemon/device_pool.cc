#include "device_pool.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "failpoint.h"
#include "ids.h"
#include "log.h"
#include "zerocopy/byte_size.h"
#include "zerocopy/cuda_device.h"  // IsGpuUuid
#include "zerocopy/status.h"

namespace zerocopy::daemon {

DevicePool::DevicePool(std::unique_ptr<DeviceBackend> backend, DevicePoolOptions options)
    : backend_(std::move(backend)), backend_name_(backend_->name()), options_(options) {}

DevicePool::~DevicePool() {
  // Importers hold no lease past the daemon's life: their sessions ended.
  absl::MutexLock lock(&mu_);
  copies_.clear();
}

namespace {
constexpr char kWouldUpload[] = "zerocopy.daemon/would-upload";
}  // namespace

absl::Status DevicePool::WouldUpload(const std::string& digest, const std::string& uuid) {
  absl::Status status = absl::UnavailableError(absl::StrCat("no device copy of ", digest, " ready on GPU ", uuid));
  status.SetPayload(kWouldUpload, absl::Cord("1"));
  return status;
}

bool DevicePool::IsWouldUpload(const absl::Status& status) { return status.GetPayload(kWouldUpload).has_value(); }

absl::StatusOr<v1::DeviceCopy> DevicePool::Acquire(uint64_t session, const std::string& digest, const std::string& uuid,
                                                   uint64_t size, const HostSource& host, Mode mode) {
  if (!cuda::IsGpuUuid(uuid)) {
    return absl::InvalidArgumentError(absl::StrCat("'", uuid,
                                                   "' is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, as "
                                                   "nvidia-smi -L prints it)"));
  }
  bool known;
  {
    absl::MutexLock lock(&mu_);
    known = gpus_.count(uuid) != 0;
  }
  if (!known) {
    if (mode == Mode::kLeaseOnly) return WouldUpload(digest, uuid);
    // Outside the lock: the first CUDA call of the process creates a context.
    ZC_ASSIGN_OR_RETURN(uint64_t total, backend_->TotalMemory(uuid));
    absl::MutexLock lock(&mu_);
    if (!gpus_.count(uuid)) {
      Gpu& gpu = gpus_[uuid];
      gpu.total_memory = total;
      gpu.budget = options_.budget_bytes != 0
                       ? options_.budget_bytes
                       : static_cast<uint64_t>(static_cast<double>(total) * options_.budget_fraction);
    }
  }

  const Key key{uuid, digest};
  std::vector<std::unique_ptr<DeviceBuffer>> freed;  // destroyed after the lock is released
  {
    absl::MutexLock lock(&mu_);
    auto settled = [this, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto it = copies_.find(key);
      return it == copies_.end() || !it->second.uploading;
    };
    if (mode == Mode::kLeaseOnly && !settled()) return WouldUpload(digest, uuid);
    mu_.Await(absl::Condition(&settled));  // another request is making it: share its result
    auto it = copies_.find(key);
    if (it != copies_.end()) {
      // A copy whose model was dropped but is still leased serves the model
      // again if it came back (same digest: same bytes).
      it->second.dropped = false;
      return Lease(session, key, &it->second);
    }
    if (mode == Mode::kLeaseOnly) return WouldUpload(digest, uuid);
    Gpu& gpu = gpus_[uuid];
    if (size > gpu.budget) {
      return absl::ResourceExhaustedError(absl::StrCat("model of ", FormatBytes(size), " exceeds the budget of ",
                                                       FormatBytes(gpu.budget), " on GPU ", uuid,
                                                       " (gpu_budget in zerocopyd's config)"));
    }
    if (!MakeRoom(uuid, &gpu, size, false, &freed)) {
      return absl::ResourceExhaustedError(absl::StrCat("model of ", FormatBytes(size), " does not fit on GPU ", uuid,
                                                       ": ", FormatBytes(gpu.used), " of ", FormatBytes(gpu.budget),
                                                       " hold device copies leased by running processes"));
    }
    gpu.used += size;
    Copy& copy = copies_[key];
    copy.size = size;
  }
  freed.clear();

  auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> buffer = absl::UnknownError("not uploaded");
  {
    Failpoint("gpu:upload");  // a slow upload, for the tests
    auto bytes = host();
    if (!bytes.ok()) {
      buffer = bytes.status();
    } else {
      buffer = backend_->Upload(uuid, bytes->data, size);
      if (absl::IsResourceExhausted(buffer.status())) {
        // Other programs hold the GPU's memory: make room among our own
        // unleased copies, then try once more.
        {
          absl::MutexLock lock(&mu_);
          MakeRoom(uuid, &gpus_[uuid], 0, true, &freed);
        }
        if (!freed.empty()) {
          freed.clear();
          buffer = backend_->Upload(uuid, bytes->data, size);
        }
      }
    }
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  absl::MutexLock lock(&mu_);
  auto it = copies_.find(key);  // only this call erases an uploading copy
  Gpu& gpu = gpus_[uuid];
  if (!buffer.ok()) {
    gpu.used -= size;
    copies_.erase(it);
    return buffer.status();
  }
  it->second.buffer = *std::move(buffer);
  it->second.uploading = false;
  ++gpu.uploads;
  gpu.uploaded_bytes += size;
  gpu.upload_seconds += ms / 1000;
  Log().info("device copy digest={} gpu={} size={} ms={:.1f}", digest, uuid, FormatBytes(size), ms);
  if (it->second.dropped) {
    freed.push_back(Erase(it));
    return absl::NotFoundError(absl::StrCat("model ", digest, " was removed while its device copy was made"));
  }
  return Lease(session, key, &it->second);
}

v1::DeviceCopy DevicePool::Lease(uint64_t session, const Key& key, Copy* copy) {
  if (sessions_[session][key]++ == 0) ++copy->leases;
  copy->last_used_ms = NowUnixMs();
  v1::DeviceCopy out;
  out.set_gpu_uuid(key.first);
  out.set_backend(backend_name_);
  out.set_ipc_handle(copy->buffer->handle());
  out.set_size(copy->size);
  return out;
}

std::unique_ptr<DeviceBuffer> DevicePool::Erase(std::map<Key, Copy>::iterator it) {
  auto g = gpus_.find(it->first.first);
  if (g != gpus_.end()) g->second.used -= it->second.size;
  std::unique_ptr<DeviceBuffer> buffer = std::move(it->second.buffer);
  copies_.erase(it);
  return buffer;
}

bool DevicePool::MakeRoom(const std::string& uuid, Gpu* gpu, uint64_t needed, bool all,
                          std::vector<std::unique_ptr<DeviceBuffer>>* freed) {
  std::vector<std::map<Key, Copy>::iterator> candidates;
  for (auto it = copies_.lower_bound(Key{uuid, ""}); it != copies_.end() && it->first.first == uuid; ++it) {
    if (!it->second.uploading && it->second.leases == 0) candidates.push_back(it);
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const auto& a, const auto& b) { return a->second.last_used_ms < b->second.last_used_ms; });
  uint64_t freeable = 0;
  size_t n = 0;
  while (n < candidates.size() && (all || gpu->used - freeable + needed > gpu->budget)) {
    freeable += candidates[n++]->second.size;
  }
  if (!all && gpu->used - freeable + needed > gpu->budget) return false;
  for (size_t i = 0; i < n; ++i) {
    Log().info("evicted device copy digest={} gpu={} size={}", candidates[i]->first.second, uuid,
               FormatBytes(candidates[i]->second.size));
    ++gpu->evictions;
    freed->push_back(Erase(candidates[i]));
  }
  return true;
}

void DevicePool::Unlease(const Key& key, std::vector<std::unique_ptr<DeviceBuffer>>* freed) {
  auto it = copies_.find(key);
  if (it == copies_.end()) return;
  if (it->second.leases > 0) --it->second.leases;
  it->second.last_used_ms = NowUnixMs();
  if (it->second.leases == 0 && it->second.dropped) freed->push_back(Erase(it));
}

absl::Status DevicePool::Release(uint64_t session, const std::string& digest, const std::string& uuid) {
  absl::MutexLock lock(&mu_);
  const Key key{uuid, digest};
  auto s = sessions_.find(session);
  auto lease = s == sessions_.end() ? std::map<Key, uint32_t>::iterator() : s->second.find(key);
  if (s == sessions_.end() || lease == s->second.end()) {
    return absl::NotFoundError(absl::StrCat("session ", session, " holds no lease on ", digest, " on GPU ", uuid));
  }
  if (--lease->second == 0) {
    s->second.erase(lease);
    if (s->second.empty()) sessions_.erase(s);
    Unlease(key, &graveyard_);
  }
  return absl::OkStatus();
}

void DevicePool::CloseSession(uint64_t session) {
  absl::MutexLock lock(&mu_);
  auto s = sessions_.find(session);
  if (s == sessions_.end()) return;
  for (const auto& lease : s->second) Unlease(lease.first, &graveyard_);
  sessions_.erase(s);
}

void DevicePool::DropModel(const std::string& digest) {
  absl::MutexLock lock(&mu_);
  for (auto it = copies_.begin(); it != copies_.end();) {
    auto next = std::next(it);
    if (it->first.second == digest) {
      if (it->second.leases == 0 && !it->second.uploading)
        graveyard_.push_back(Erase(it));
      else
        it->second.dropped = true;
    }
    it = next;
  }
}

void DevicePool::Reap() {
  std::vector<std::unique_ptr<DeviceBuffer>> dead;
  {
    absl::MutexLock lock(&mu_);
    dead.swap(graveyard_);
  }
}

std::vector<v1::GpuStats> DevicePool::Stats() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::GpuStats> out;
  for (const auto& [uuid, gpu] : gpus_) {
    v1::GpuStats s;
    s.set_uuid(uuid);
    s.set_budget(gpu.budget);
    s.set_bytes_used(gpu.used);
    s.set_total_memory(gpu.total_memory);
    s.set_uploads(gpu.uploads);
    s.set_uploaded_bytes(gpu.uploaded_bytes);
    s.set_upload_seconds(gpu.upload_seconds);
    s.set_evictions(gpu.evictions);
    uint32_t copies = 0, leases = 0;
    for (auto it = copies_.lower_bound(Key{uuid, ""}); it != copies_.end() && it->first.first == uuid; ++it) {
      ++copies;
      leases += it->second.leases;
    }
    s.set_copies(copies);
    s.set_leases(leases);
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::string> DevicePool::GpusOf(const std::string& digest) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [key, copy] : copies_) {
    if (key.second == digest && !copy.uploading && !copy.dropped) out.push_back(key.first);
  }
  return out;
}

}  // namespace zerocopy::daemon
