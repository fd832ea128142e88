#include "zerocopy/model_view.h"

#include "absl/strings/str_cat.h"
#include "dlpack_export.h"
#include "zerocopy/manifest.h"
#include "zerocopy/status.h"

namespace zerocopy {

ModelView::~ModelView() {
  if (on_release_) on_release_();
}

absl::Status ModelView::Init(v1::ModelInfo info, std::shared_ptr<const v1::Manifest> manifest,
                             std::function<void()> on_release) {
  on_release_ = std::move(on_release);  // first: a view that fails from here on still gives the lease back
  // A view outside the bytes would read someone else's memory.
  ZC_RETURN_IF_ERROR(Annotate(ValidateManifest(*manifest), "manifest from the daemon"));
  ZC_RETURN_IF_ERROR(Annotate(CheckLayout(*manifest), "manifest from the daemon"));
  info_ = std::move(info);
  manifest_ = std::move(manifest);
  by_name_.reserve(manifest_->tensors_size());
  for (int i = 0; i < manifest_->tensors_size(); ++i) by_name_[manifest_->tensors(i).name()] = i;
  return absl::OkStatus();
}

absl::StatusOr<size_t> ModelView::IndexOf(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return absl::NotFoundError(absl::StrCat("model ", digest(), " has no tensor '", name, "'"));
  return it->second;
}

std::vector<bool> ModelView::SoleCoveringTensors() const {
  const v1::Manifest& m = *manifest_;
  std::vector<uint32_t> users(static_cast<size_t>(m.storages_size()), 0);
  for (const auto& t : m.tensors()) ++users[t.storage()];
  std::vector<bool> out(static_cast<size_t>(m.tensors_size()));
  for (int i = 0; i < m.tensors_size(); ++i) {
    const v1::Tensor& t = m.tensors(i);
    out[static_cast<size_t>(i)] =
        users[t.storage()] == 1 && CoversStorage(t, m.storages(static_cast<int>(t.storage())));
  }
  return out;
}

uint8_t* ModelView::TensorAddress(size_t index) const {
  const v1::Tensor& spec = manifest_->tensors(static_cast<int>(index));
  const v1::Storage& storage = manifest_->storages(static_cast<int>(spec.storage()));
  uint8_t* start = base();
  return start == nullptr ? nullptr : start + storage.offset() + spec.byte_offset();
}

absl::StatusOr<DLManagedTensor*> ModelView::ToDLPack(size_t index) {
  if (index >= tensor_count()) return absl::OutOfRangeError(absl::StrCat("tensor ", index, " of ", tensor_count()));
  return internal::TensorToDLPack(shared_from_this(), TensorAddress(index), dl_device(),
                                  manifest_->tensors(static_cast<int>(index)));
}

absl::StatusOr<DLManagedTensor*> ModelView::StorageToDLPack(size_t index) {
  if (index >= static_cast<size_t>(manifest_->storages_size())) {
    return absl::OutOfRangeError(absl::StrCat("storage ", index, " of ", manifest_->storages_size()));
  }
  const auto& storage = manifest_->storages(static_cast<int>(index));
  return internal::BytesToDLPack(shared_from_this(), base() + storage.offset(), dl_device(), storage.size());
}

}  // namespace zerocopy
