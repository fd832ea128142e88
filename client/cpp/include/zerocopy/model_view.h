// ModelView: what a model mapped into this process has, wherever its bytes
// lie (the host mapping: MappedModel; a GPU's shared copy: DeviceModel):
// its info and manifest, checked before any byte is touched; tensors by
// index and by name; DLPack exports over its bytes that keep it alive; and
// the lease, given back once it and every export over it are gone.
//
// Thread safety: immutable after creation.
#pragma once

#include <dlpack/dlpack.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

class ModelView : public std::enable_shared_from_this<ModelView> {
 public:
  ModelView(const ModelView&) = delete;
  ModelView& operator=(const ModelView&) = delete;
  // Runs the release (the lease) after the subclass has let go of the bytes.
  virtual ~ModelView();

  const v1::ModelInfo& info() const { return info_; }
  const std::string& digest() const { return info_.digest(); }
  const v1::Manifest& manifest() const { return *manifest_; }
  uint64_t size() const { return manifest_->total_size(); }
  size_t tensor_count() const { return static_cast<size_t>(manifest_->tensors_size()); }
  // The index of tensor `name`. Errors: NOT_FOUND.
  absl::StatusOr<size_t> IndexOf(const std::string& name) const;
  // For each tensor, whether it is the only one viewing its storage and
  // covers it (CoversStorage in manifest.h): such a tensor is its storage,
  // and a consumer can take it whole (one DLPack import) instead of
  // carving it from the storage.
  std::vector<bool> SoleCoveringTensors() const;

  // A DLPack tensor over tensor `index` (on the view's device) whose
  // deleter drops a reference to this view. Errors: OUT_OF_RANGE,
  // UNIMPLEMENTED for dtypes DLPack lacks.
  absl::StatusOr<DLManagedTensor*> ToDLPack(size_t index);
  // A DLPack tensor (uint8, 1-D) over all the bytes of storage `index`:
  // consumers that rebuild tensors as views of shared storages (tied
  // weights stay tied) start from this. Errors: OUT_OF_RANGE.
  absl::StatusOr<DLManagedTensor*> StorageToDLPack(size_t index);

 protected:
  ModelView() = default;
  // Checks `manifest` (as the daemon sent it: nothing is trusted before
  // this) and keeps it. INVALID_ARGUMENT naming what is wrong. From here
  // on, `on_release` runs when the view goes, also when its Open fails
  // after this.
  // The manifest may be shared with other views (the client's cache of
  // parsed manifests): it is never changed.
  absl::Status Init(v1::ModelInfo info, std::shared_ptr<const v1::Manifest> manifest, std::function<void()> on_release);
  // The first byte of tensor `index` (unchecked: index < tensor_count()).
  uint8_t* TensorAddress(size_t index) const;

  // Where the model's bytes start, and the device DLPack names them on.
  virtual uint8_t* base() const = 0;
  virtual DLDevice dl_device() const = 0;

 private:
  v1::ModelInfo info_;
  std::shared_ptr<const v1::Manifest> manifest_;
  absl::flat_hash_map<absl::string_view, size_t> by_name_;  // views into *manifest_, never changed after Init
  std::function<void()> on_release_;
};

}  // namespace zerocopy
