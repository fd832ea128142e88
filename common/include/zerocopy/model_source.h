// ModelSource: what a publisher hands to Client::Publish. The manifest
// describes storages (sizes) and tensors; storage_data[i] points at the
// manifest.storages(i).size() bytes of storage i, which must stay valid and
// unchanged until Publish returns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

struct ModelSource {
  ::zerocopy::v1::Manifest manifest;
  std::vector<const void*> storage_data;
};

// Builds a ModelSource from storages in memory and tensors described by
// plain values (as bindings receive them). Validation of the whole is the
// daemon's and Publish's; this checks what it parses.
class ModelSourceBuilder {
 public:
  // Returns the storage's index.
  uint32_t AddStorage(const void* data, uint64_t size);
  // `dtype`: the wire name ("F32", "BF16", ...). INVALID_ARGUMENT naming
  // the tensor for an unknown dtype or a storage not added yet.
  absl::Status AddTensor(const std::string& name, uint32_t storage, uint64_t byte_offset, absl::string_view dtype,
                         const std::vector<int64_t>& shape, const std::vector<int64_t>& strides);
  void set_metadata(std::string metadata) { source_.manifest.set_metadata(std::move(metadata)); }
  void set_format(std::string format) { source_.manifest.set_format(std::move(format)); }

  ModelSource Build() && { return std::move(source_); }

 private:
  ModelSource source_;
};

}  // namespace zerocopy
