#include "zerocopy/model_source.h"

#include "absl/strings/str_cat.h"
#include "zerocopy/dtype.h"

namespace zerocopy {

uint32_t ModelSourceBuilder::AddStorage(const void* data, uint64_t size) {
  source_.manifest.add_storages()->set_size(size);
  source_.storage_data.push_back(data);
  return static_cast<uint32_t>(source_.storage_data.size() - 1);
}

absl::Status ModelSourceBuilder::AddTensor(const std::string& name, uint32_t storage, uint64_t byte_offset,
                                           absl::string_view dtype, const std::vector<int64_t>& shape,
                                           const std::vector<int64_t>& strides) {
  absl::StatusOr<DType> parsed = ParseDType(dtype);
  if (!parsed.ok())
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has unknown dtype '", dtype, "'"));
  if (storage >= source_.storage_data.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' names storage ", storage, " of ", source_.storage_data.size()));
  }
  v1::Tensor* t = source_.manifest.add_tensors();
  t->set_name(name);
  t->set_storage(storage);
  t->set_byte_offset(byte_offset);
  t->set_dtype(*parsed);
  for (int64_t d : shape) t->add_shape(d);
  for (int64_t s : strides) t->add_strides(s);
  return absl::OkStatus();
}

}  // namespace zerocopy
