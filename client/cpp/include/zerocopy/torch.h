// The C++ torch adapter: LibTorch tensors, TorchScript modules and
// AOTInductor packages over a model mapped from zerocopyd, zero-copy. Include this only where you use
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
#include <unordered_map>
#include <vector>

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "zerocopy/mapped_model.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

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

// An AOTInductor package (format "aoti": aoti_compile_and_package with its
// weights beside the library, preloaded), run by torch's own
// AOTIModelPackageLoader with every weight a view of the mapping: the
// loader keeps the tensors' addresses (user_managed constants), copies
// nothing, and this object keeps the tensors and the mapping alive.
class AotInductorModel {
 public:
  ~AotInductorModel();
  AotInductorModel(const AotInductorModel&) = delete;
  AotInductorModel& operator=(const AotInductorModel&) = delete;

  // The compiled program's outputs for `inputs` (flattened tensors, as
  // torch::inductor::AOTIModelPackageLoader::run takes them).
  // Errors: INVALID_ARGUMENT with the library's message.
  absl::StatusOr<std::vector<at::Tensor>> Run(const std::vector<at::Tensor>& inputs);

  // The weights the library computes from, by name: views of the mapping.
  const std::unordered_map<std::string, at::Tensor>& constants() const { return constants_; }
  const std::shared_ptr<MappedModel>& model() const { return model_; }

 private:
  friend absl::StatusOr<std::unique_ptr<AotInductorModel>> LoadAotInductor(const std::shared_ptr<MappedModel>&,
                                                                           const std::string&);
  AotInductorModel() = default;
  std::shared_ptr<MappedModel> model_;
  std::unordered_map<std::string, at::Tensor> constants_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

// Loads a CPU AOTInductor package. Its program files (the library, its
// metadata, everything but the weights) are written once per user to
// `cache_dir`/<digest>/ (default: $ZEROCOPY_AOTI_CACHE, else
// ~/.cache/zerocopy/aoti; the directory ray_zerocopy.load_aoti uses), which
// torch's loader opens; the cache and that directory must be this user's
// and writable by no one else, and an incomplete one is written again.
// The library is native code of the model's publisher: as with
// LoadTorchScript, the caller decides whom to trust (MappedModel's info
// names the publisher; ray_zerocopy.load_aoti checks it). Errors: INVALID_ARGUMENT when the model is not an
// AOTInductor package or torch's loader refuses it; FAILED_PRECONDITION
// for a package compiled for a GPU, another platform or instructions this
// CPU lacks (torch's loader only warns, and the library could then crash
// the process); an errno status when the cache cannot be written.
absl::StatusOr<std::unique_ptr<AotInductorModel>> LoadAotInductor(const std::shared_ptr<MappedModel>& model,
                                                                  const std::string& cache_dir = "");

}  // namespace zerocopy
