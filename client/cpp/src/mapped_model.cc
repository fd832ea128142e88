#include "zerocopy/mapped_model.h"

#include <dlpack/dlpack.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "dlpack_export.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy {

absl::StatusOr<std::shared_ptr<MappedModel>> MappedModel::Open(const std::string& path, v1::ModelInfo info,
                                                               v1::Manifest manifest, const MapOptions& options,
                                                               std::function<void()> on_release) {
  // Trust nothing the daemon sent before it is checked: a view outside the
  // mapping would read someone else's memory.
  ZC_RETURN_IF_ERROR(Annotate(ValidateManifest(manifest), "manifest from the daemon"));
  ZC_RETURN_IF_ERROR(Annotate(CheckLayout(manifest), "manifest from the daemon"));
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (static_cast<uint64_t>(st.st_size) != manifest.total_size()) {
    return absl::DataLossError(absl::StrCat(path, " is ", st.st_size, " bytes; its manifest says ",
                                            manifest.total_size()));
  }
  MappedRegion::Options map_options;
  map_options.access = options.read_only ? MappedRegion::Access::kReadOnly : MappedRegion::Access::kCopyOnWrite;
  map_options.populate = options.populate;
  ZC_ASSIGN_OR_RETURN(MappedRegion region, MappedRegion::Map(fd.get(), manifest.total_size(), map_options));
  std::shared_ptr<MappedModel> model(new MappedModel());
  model->info_ = std::move(info);
  model->manifest_ = std::move(manifest);
  model->region_ = std::move(region);
  model->on_release_ = std::move(on_release);
  model->by_name_.reserve(model->manifest_.tensors_size());
  for (int i = 0; i < model->manifest_.tensors_size(); ++i) model->by_name_[model->manifest_.tensors(i).name()] = i;
  return model;
}

MappedModel::~MappedModel() {
  region_.Reset();
  if (on_release_) on_release_();
}

TensorView MappedModel::tensor(size_t index) const {
  const v1::Tensor& spec = manifest_.tensors(static_cast<int>(index));
  const v1::Storage& storage = manifest_.storages(static_cast<int>(spec.storage()));
  uint8_t* base = region_.data() == nullptr ? nullptr : region_.data() + storage.offset() + spec.byte_offset();
  auto extent = TensorExtent(spec);  // validated at Open
  return TensorView{&spec, base, extent.ok() ? *extent : 0};
}

absl::StatusOr<TensorView> MappedModel::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat("model ", info_.digest(), " has no tensor '", name, "'"));
  }
  return tensor(it->second);
}

absl::StatusOr<DLManagedTensor*> MappedModel::ToDLPack(size_t index) {
  if (index >= tensor_count()) return absl::OutOfRangeError(absl::StrCat("tensor ", index, " of ", tensor_count()));
  TensorView view = tensor(index);
  return internal::TensorToDLPack(shared_from_this(), view.data, DLDevice{kDLCPU, 0}, *view.spec);
}

absl::StatusOr<DLManagedTensor*> MappedModel::StorageToDLPack(size_t index) {
  if (index >= static_cast<size_t>(manifest_.storages_size())) {
    return absl::OutOfRangeError(absl::StrCat("storage ", index, " of ", manifest_.storages_size()));
  }
  const auto& storage = manifest_.storages(static_cast<int>(index));
  return internal::BytesToDLPack(shared_from_this(), region_.data() + storage.offset(), DLDevice{kDLCPU, 0},
                                 storage.size());
}

std::string MappedModel::ComputeDigest(unsigned threads) const {
  return ::zerocopy::ComputeDigest(region_.data(), region_.size(), manifest_, threads);
}

}  // namespace zerocopy
