// MappedModel: one committed model mapped into this process.
//
// Copy-on-write by default (MAP_PRIVATE): a write to a weight gives this
// process a private page; other processes and the file never see it.
// kReadOnly maps PROT_READ (a write faults). Tensors are views into the
// mapping; DLPack exports (ModelView) keep the MappedModel alive through
// their deleter.
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
#include "absl/strings/string_view.h"
#include "zerocopy/dtype.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/model_view.h"
#include "zerocopy/v1/model_store.pb.h"

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

class MappedModel final : public ModelView {
 public:
  // Maps the segment at `path`, which must be exactly manifest.total_size()
  // bytes. `on_release` (the lease's release) runs when the mapping is
  // destroyed, or before Open returns an error. Errors: NOT_FOUND (removed meanwhile), DATA_LOSS (size
  // differs), INVALID_ARGUMENT (manifest), INTERNAL (mmap).
  static absl::StatusOr<std::shared_ptr<MappedModel>> Open(const std::string& path, v1::ModelInfo info,
                                                           std::shared_ptr<const v1::Manifest> manifest,
                                                           const MapOptions& options,
                                                           std::function<void()> on_release = nullptr);
  static absl::StatusOr<std::shared_ptr<MappedModel>> Open(const std::string& path, v1::ModelInfo info,
                                                           v1::Manifest manifest, const MapOptions& options,
                                                           std::function<void()> on_release = nullptr) {
    return Open(path, std::move(info), std::make_shared<const v1::Manifest>(std::move(manifest)), options,
                std::move(on_release));
  }

  const uint8_t* data() const { return region_.data(); }

  TensorView tensor(size_t index) const;
  // Errors: NOT_FOUND.
  absl::StatusOr<TensorView> Find(const std::string& name) const;

  // The bytes of file `name` kept with the model (Manifest.files: a Hugging
  // Face config, a tokenizer, a program), a view into the mapping. Errors:
  // NOT_FOUND naming the files the model has.
  absl::StatusOr<absl::string_view> File(absl::string_view name) const;

  // Recomputes the digest from the mapped bytes (zerocopy verify).
  std::string ComputeDigest(unsigned threads = 0) const;

 private:
  MappedModel() = default;
  uint8_t* base() const override { return region_.data(); }
  DLDevice dl_device() const override { return DLDevice{kDLCPU, 0}; }

  MappedRegion region_;  // unmapped before ModelView's destructor gives the lease back
};

}  // namespace zerocopy
