// The C++ torch adapter: LibTorch tensors and TorchScript modules over a
// model mapped from zerocopyd, zero-copy. Include this only where you use
// LibTorch; link zerocopy_torch.
//
//   auto client = zerocopy::Client::ForThisProcess();
//   auto model = client->Map("resnet");               // a lease + mapping
//   auto module = zerocopy::LoadTorchScript(*model);  // weights are views
//   module->forward({input});
//
// Every tensor holds a reference to the MappedModel: the mapping (and the
// lease against eviction) lives as long as any tensor does. Tensors that
// shared a storage when published share one here (tied weights stay tied).
// The mapping is copy-on-write unless mapped read-only: writes stay in
// this process.
#pragma once

#include <memory>
#include <string>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "zerocopy/mapped_model.h"

namespace zerocopy {

// Every tensor of the model by name, in manifest order.
// Errors: UNIMPLEMENTED for a dtype this torch lacks.
absl::StatusOr<torch::OrderedDict<std::string, at::Tensor>> TorchStateDict(const std::shared_ptr<MappedModel>& model);

// A TorchScript model (preloaded from a torch.jit.save archive, or
// published by JITModelWrapper): its code from the weight-free archive in
// the metadata, every parameter and buffer a view of the mapping, in eval
// mode. Errors: INVALID_ARGUMENT when the model is not TorchScript or its
// archive does not load.
absl::StatusOr<torch::jit::Module> LoadTorchScript(const std::shared_ptr<MappedModel>& model);

}  // namespace zerocopy
