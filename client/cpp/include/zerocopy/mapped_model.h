// MappedModel: one committed model mapped into this process.
//
// Copy-on-write by default (MAP_PRIVATE): a write to a weight gives this
// process a private page; other processes and the file never see it.
// kReadOnly maps PROT_READ (a write faults). Tensors are views into the
// mapping; DLPack exports keep the MappedModel alive through their deleter.
//
// Thread safety: immutable after creation (the bytes are yours to read and,
// copy-on-write, to write).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/dtype.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/v1/model_store.pb.h"

struct DLManagedTensor;

namespace zerocopy {

struct MapOptions {
  bool read_only = false;  // PROT_READ instead of copy-on-write
  bool populate = false;   // MAP_POPULATE: fault everything in now
};

struct TensorView {
  const v1::Tensor* spec;  // name, dtype, shape, strides
  uint8_t* data;           // first element
  uint64_t extent;         // bytes spanned from data
};

class MappedModel : public std::enable_shared_from_this<MappedModel> {
 public:
  // Maps the segment at `path`, which must be exactly manifest.total_size()
  // bytes. `on_release` runs when the mapping is destroyed (a lease
  // release). Errors: NOT_FOUND (removed meanwhile), DATA_LOSS (size
  // differs), INVALID_ARGUMENT (manifest), INTERNAL (mmap).
  static absl::StatusOr<std::shared_ptr<MappedModel>> Open(const std::string& path, v1::ModelInfo info,
                                                           v1::Manifest manifest, const MapOptions& options,
                                                           std::function<void()> on_release = nullptr);
  ~MappedModel();

  const v1::ModelInfo& info() const { return info_; }
  const std::string& digest() const { return info_.digest(); }
  const v1::Manifest& manifest() const { return manifest_; }
  const uint8_t* data() const { return region_.data(); }
  uint64_t size() const { return region_.size(); }

  size_t tensor_count() const { return static_cast<size_t>(manifest_.tensors_size()); }
  TensorView tensor(size_t index) const;
  // Errors: NOT_FOUND.
  absl::StatusOr<TensorView> Find(const std::string& name) const;

  // A DLPack tensor (kDLCPU) over tensor `index`; its deleter releases a
  // reference to this model. Errors: UNIMPLEMENTED for dtypes DLPack lacks.
  absl::StatusOr<DLManagedTensor*> ToDLPack(size_t index);

  // A DLPack tensor (kDLCPU, uint8, 1-D) over all the bytes of storage
  // `index`: consumers that rebuild tensors as views of shared storages
  // (tied weights stay tied) start from this. Errors: OUT_OF_RANGE.
  absl::StatusOr<DLManagedTensor*> StorageToDLPack(size_t index);

  // Recomputes the digest from the mapped bytes (zerocopy verify).
  std::string ComputeDigest(unsigned threads = 0) const;

 private:
  MappedModel() = default;
  v1::ModelInfo info_;
  v1::Manifest manifest_;
  MappedRegion region_;
  std::unordered_map<std::string, size_t> by_name_;
  std::function<void()> on_release_;
};

}  // namespace zerocopy
