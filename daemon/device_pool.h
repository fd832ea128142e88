// DevicePool: the device copies of models, one per model per GPU, leased
// by sessions, within a per-GPU budget (LRU eviction of unleased copies).
//
// A DeviceBackend (device_backend.h) makes and frees the copies: "cuda"
// (cuda_backend.cc), "fake" (fake_backend.cc: tests), or "off".
//
// Rules:
// - Acquire makes the copy once: concurrent requests for the same model on
//   the same GPU wait for the one upload in flight and share its result.
// - A copy is freed only when no session leases it, and then only when it
//   is evicted (to fit another within the budget) or its model is gone
//   (deleted or evicted on the host). A leased copy of a deleted model is
//   freed with its last lease: importers' pointers stay valid meanwhile.
// - Device errors become statuses; nothing here aborts the daemon.
//
// Thread safety: all public methods may be called from any thread. One
// mutex guards the maps; uploads and frees run outside it. Lock order:
// ModelRegistry's mutex, then this one (never the reverse).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "device_backend.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

struct DevicePoolOptions {
  uint64_t budget_bytes = 0;  // per GPU; 0: budget_fraction of its memory
  double budget_fraction = 0.9;
};

class DevicePool {
 public:
  DevicePool(std::unique_ptr<DeviceBackend> backend, DevicePoolOptions options);
  ~DevicePool();

  const std::string& backend_name() const { return backend_name_; }

  // The host bytes of a model, mapped for the upload (and unmapped after).
  struct HostBytes {
    const uint8_t* data = nullptr;
    std::shared_ptr<void> keep;  // holds the mapping
  };
  using HostSource = std::function<absl::StatusOr<HostBytes>()>;

  // kLeaseOnly: only lease a copy that is ready; what would upload (or
  // wait for another request's upload, or meet the GPU for the first time)
  // answers WouldUpload() instead, at once.
  enum class Mode { kMayUpload, kLeaseOnly };

  // Leases, for `session`, the copy of model `digest` (`size` bytes) on GPU
  // `uuid`, making it from `host` if there is none. Errors: INVALID_ARGUMENT
  // (not a GPU UUID), those of the backend, RESOURCE_EXHAUSTED (does not
  // fit the GPU's budget even after evicting every unleased copy), NOT_FOUND
  // (the model was removed while being copied), WouldUpload() (kLeaseOnly).
  absl::StatusOr<v1::DeviceCopy> Acquire(uint64_t session, const std::string& digest, const std::string& uuid,
                                         uint64_t size, const HostSource& host, Mode mode = Mode::kMayUpload);
  // The answer of a kLeaseOnly Acquire that would have to upload: an
  // UNAVAILABLE marked so that IsWouldUpload tells it from the backend's.
  static absl::Status WouldUpload(const std::string& digest, const std::string& uuid);
  static bool IsWouldUpload(const absl::Status& status);
  // Errors: NOT_FOUND (the session holds no such lease).
  absl::Status Release(uint64_t session, const std::string& digest, const std::string& uuid);
  // Releases every device lease of the session.
  void CloseSession(uint64_t session);
  // The host model is gone: free its unleased copies now, the rest with
  // their last lease.
  void DropModel(const std::string& digest);

  // Frees the copies that Release, CloseSession and DropModel let go of.
  // Those run under the registry's lock and only queue them: cudaFree can
  // wait for the device, so call this with no lock held.
  void Reap();

  std::vector<v1::GpuStats> Stats();
  // The GPUs holding a (ready) copy of `digest`.
  std::vector<std::string> GpusOf(const std::string& digest);

 private:
  using Key = std::pair<std::string, std::string>;  // (uuid, digest)
  struct Copy {
    std::unique_ptr<DeviceBuffer> buffer;  // null while uploading
    uint64_t size = 0;
    uint32_t leases = 0;
    int64_t last_used_ms = 0;
    bool uploading = true;
    bool dropped = false;  // model gone: free with the last lease
  };
  struct Gpu {
    uint64_t budget = 0;
    uint64_t total_memory = 0;
    uint64_t used = 0;
    uint64_t uploads = 0;
    uint64_t uploaded_bytes = 0;
    double upload_seconds = 0;
    uint64_t evictions = 0;
  };

  // Unleased ready copies on `uuid`, least recently used first, until
  // `needed` bytes fit; moved into `freed` (destroyed outside the lock).
  // Returns whether it fits.
  bool MakeRoom(const std::string& uuid, Gpu* gpu, uint64_t needed, bool all,
                std::vector<std::unique_ptr<DeviceBuffer>>* freed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Erases a copy and returns its buffer.
  std::unique_ptr<DeviceBuffer> Erase(std::map<Key, Copy>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::DeviceCopy Lease(uint64_t session, const Key& key, Copy* copy) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A session let go of `key`; a dropped copy's buffer goes to `freed`.
  void Unlease(const Key& key, std::vector<std::unique_ptr<DeviceBuffer>>* freed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<DeviceBackend> backend_;
  const std::string backend_name_;
  const DevicePoolOptions options_;

  absl::Mutex mu_;
  std::map<Key, Copy> copies_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Gpu> gpus_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::map<Key, uint32_t>> sessions_ ABSL_GUARDED_BY(mu_);  // session -> lease counts
  std::vector<std::unique_ptr<DeviceBuffer>> graveyard_ ABSL_GUARDED_BY(mu_);  // freed by Reap
};

}  // namespace zerocopy::daemon
