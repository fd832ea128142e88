// DLPack tensors over bytes someone else owns (a host mapping, a device
// copy): shared by MappedModel and DeviceModel.
#pragma once

#include <dlpack/dlpack.h>

#include <memory>

#include "absl/status/statusor.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::internal {

// A DLPack tensor at `data` on `device` described by `spec` (dtype, shape,
// strides); its deleter drops `owner`. Errors: UNIMPLEMENTED for dtypes
// DLPack lacks.
absl::StatusOr<DLManagedTensor*> TensorToDLPack(std::shared_ptr<const void> owner, void* data, DLDevice device,
                                                const v1::Tensor& spec);
// A 1-D uint8 DLPack tensor of `size` bytes at `data`.
DLManagedTensor* BytesToDLPack(std::shared_ptr<const void> owner, void* data, DLDevice device, uint64_t size);

}  // namespace zerocopy::internal
