// Lease: a lease a GetModel call took for its session (on the host copy,
// or on a GPU's device copy), as an object. Until the call hands it to its
// session (HandOver), destroying it gives it back: a call that fails or is
// cancelled after leasing undoes itself, whichever way it returns. Once
// handed over, the session holds it until ReleaseModel or the session's
// end.
//
// Thread safety: a Lease is used by one thread; giving one back takes the
// registry's lock, so it must not be destroyed while holding it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace zerocopy::daemon {

class ModelRegistry;

class Lease {
 public:
  Lease() = default;
  // `gpu_uuid` empty: the host lease.
  Lease(ModelRegistry* registry, uint64_t session_id, std::string digest, std::string gpu_uuid = "")
      : registry_(registry), session_id_(session_id), digest_(std::move(digest)), gpu_uuid_(std::move(gpu_uuid)) {}
  Lease(Lease&& other) noexcept { *this = std::move(other); }
  Lease& operator=(Lease&& other) noexcept {
    if (this != &other) {
      GiveBack();
      registry_ = std::exchange(other.registry_, nullptr);
      session_id_ = other.session_id_;
      digest_ = std::move(other.digest_);
      gpu_uuid_ = std::move(other.gpu_uuid_);
    }
    return *this;
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { GiveBack(); }

  // The session keeps it from now on.
  void HandOver() { registry_ = nullptr; }
  // Whether it is held (and not yet handed over).
  explicit operator bool() const { return registry_ != nullptr; }

 private:
  void GiveBack();  // model_registry.cc

  ModelRegistry* registry_ = nullptr;
  uint64_t session_id_ = 0;
  std::string digest_;
  std::string gpu_uuid_;
};

}  // namespace zerocopy::daemon
