#include "zerocopy/mapped_model.h"

#include <dlpack/dlpack.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy {

absl::StatusOr<std::shared_ptr<MappedModel>> MappedModel::Open(const std::string& path, v1::ModelInfo info,
                                                               std::shared_ptr<const v1::Manifest> manifest,
                                                               const MapOptions& options,
                                                               std::function<void()> on_release) {
  std::shared_ptr<MappedModel> model(new MappedModel());
  // Checked before the file is touched. Should a step below fail, the
  // release runs (the model is dropped): the lease goes back.
  ZC_RETURN_IF_ERROR(model->Init(std::move(info), std::move(manifest), std::move(on_release)));
  const uint64_t size = model->size();
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (static_cast<uint64_t>(st.st_size) != size) {
    return absl::DataLossError(absl::StrCat(path, " is ", st.st_size, " bytes; its manifest says ", size));
  }
  MappedRegion::Options map_options;
  map_options.access = options.read_only ? MappedRegion::Access::kReadOnly : MappedRegion::Access::kCopyOnWrite;
  map_options.populate = options.populate;
  ZC_ASSIGN_OR_RETURN(model->region_, MappedRegion::Map(fd.get(), size, map_options));
  return model;
}

TensorView MappedModel::tensor(size_t index) const {
  const v1::Tensor& spec = manifest().tensors(static_cast<int>(index));
  auto extent = TensorExtent(spec);  // validated at Open
  return TensorView{&spec, TensorAddress(index), extent.ok() ? *extent : 0};
}

absl::StatusOr<TensorView> MappedModel::Find(const std::string& name) const {
  ZC_ASSIGN_OR_RETURN(size_t index, IndexOf(name));
  return tensor(index);
}

std::string MappedModel::ComputeDigest(unsigned threads) const {
  return ::zerocopy::ComputeDigest(region_.data(), region_.size(), manifest(), threads);
}

absl::StatusOr<absl::string_view> MappedModel::File(absl::string_view name) const {
  const v1::Manifest& m = manifest();
  std::string names;
  for (const auto& file : m.files()) {
    if (file.name() == name) {
      const auto& storage = m.storages(static_cast<int>(file.storage()));
      return absl::string_view(reinterpret_cast<const char*>(data() + storage.offset()), storage.size());
    }
    absl::StrAppend(&names, names.empty() ? "" : ", ", file.name());
  }
  return absl::NotFoundError(
      absl::StrCat("model ", digest(), " keeps no file '", name, "' (it keeps ", names.empty() ? "none" : names, ")"));
}

}  // namespace zerocopy
