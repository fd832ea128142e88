#include "zerocopy/device_model.h"

#include <dlpack/dlpack.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cstdlib>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "zerocopy/cuda_device.h"
#include "zerocopy/fake_gpu.h"
#include "zerocopy/manifest.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy {

absl::StatusOr<int> GpuOrdinal(const std::string& uuid) {
  auto fake = fake_gpu::FromEnvironment();
  if (!fake.empty()) {
    for (size_t i = 0; i < fake.size(); ++i) {
      if (fake[i] == uuid) return static_cast<int>(i);
    }
    return absl::NotFoundError(absl::StrCat("no GPU ", uuid, " among this process's fake GPUs ($ZEROCOPY_FAKE_GPUS)"));
  }
  return cuda::OrdinalOf(uuid);
}

absl::StatusOr<std::string> GpuUuid(int ordinal) {
  auto fake = fake_gpu::FromEnvironment();
  if (!fake.empty()) {
    if (ordinal < 0 || static_cast<size_t>(ordinal) >= fake.size()) {
      return absl::NotFoundError(absl::StrCat("no fake GPU ", ordinal, " ($ZEROCOPY_FAKE_GPUS has ", fake.size(), ")"));
    }
    return fake[ordinal];
  }
  ZC_ASSIGN_OR_RETURN(auto gpus, cuda::Gpus());
  if (ordinal < 0 || static_cast<size_t>(ordinal) >= gpus.size()) {
    return absl::NotFoundError(absl::StrCat("no GPU cuda:", ordinal, " in this process (it sees ", gpus.size(), ")"));
  }
  return gpus[ordinal].uuid;
}

// The opened handle: a CUDA IPC import, or a fake copy's shared mapping.
// One per handle per process: Get hands out references counted under one
// mutex, and the last reference closes the handle under that mutex, so a
// handle is never open twice at once in this process.
class DeviceImport {
 public:
  static absl::StatusOr<std::shared_ptr<DeviceImport>> Get(const v1::DeviceCopy& device, int ordinal);
  void* data() const { return cuda_ ? cuda_->data() : fake_.data(); }
  bool fake() const { return !cuda_; }
  int ordinal() const { return ordinal_; }

 private:
  struct Entry {
    std::unique_ptr<DeviceImport> import;
    size_t references = 0;
  };
  static std::shared_ptr<DeviceImport> Reference(const std::string& handle, Entry* entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  static absl::Mutex mu_;
  static std::map<std::string, Entry>* cache_ ABSL_GUARDED_BY(mu_);  // by handle; leaked: outlives static teardown

  int ordinal_ = 0;
  std::unique_ptr<cuda::Import> cuda_;
  MappedRegion fake_;
};

absl::Mutex DeviceImport::mu_(absl::kConstInit);
std::map<std::string, DeviceImport::Entry>* DeviceImport::cache_ = new std::map<std::string, DeviceImport::Entry>();

std::shared_ptr<DeviceImport> DeviceImport::Reference(const std::string& handle, Entry* entry) {
  ++entry->references;
  return std::shared_ptr<DeviceImport>(entry->import.get(), [handle](DeviceImport*) {
    absl::MutexLock lock(&mu_);
    auto it = cache_->find(handle);
    if (it != cache_->end() && --it->second.references == 0) cache_->erase(it);  // closes it
  });
}

absl::StatusOr<std::shared_ptr<DeviceImport>> DeviceImport::Get(const v1::DeviceCopy& device, int ordinal) {
  absl::MutexLock lock(&mu_);
  auto found = cache_->find(device.ipc_handle());
  if (found != cache_->end()) return Reference(found->first, &found->second);
  std::unique_ptr<DeviceImport> import(new DeviceImport());
  import->ordinal_ = ordinal;
  if (device.backend() == fake_gpu::kBackend) {
    std::optional<std::string> fake_path = fake_gpu::PathOf(device.ipc_handle());
    if (!fake_path) return absl::InvalidArgumentError("a fake device copy's handle must start with 'fake:'");
    const std::string& path = *fake_path;
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) return ErrnoStatus(errno, absl::StrCat("open fake device copy ", path));
    struct stat st;
    if (::fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) != device.size()) {
      return absl::DataLossError(absl::StrCat("fake device copy ", path, " is not ", device.size(), " bytes"));
    }
    MappedRegion::Options options;
    options.access = MappedRegion::Access::kReadWrite;  // as CUDA IPC: shared and writable
    ZC_ASSIGN_OR_RETURN(import->fake_, MappedRegion::Map(fd.get(), device.size(), options));
  } else if (device.backend() == "cuda") {
    ZC_ASSIGN_OR_RETURN(import->cuda_, cuda::OpenHandle(ordinal, device.ipc_handle()));
  } else {
    return absl::UnimplementedError(absl::StrCat("unknown device backend '", device.backend(), "'"));
  }
  auto inserted = cache_->emplace(device.ipc_handle(), Entry{std::move(import), 0}).first;
  return Reference(inserted->first, &inserted->second);
}

absl::StatusOr<std::shared_ptr<DeviceModel>> DeviceModel::Open(v1::ModelInfo info,
                                                               std::shared_ptr<const v1::Manifest> manifest,
                                                               const v1::DeviceCopy& device,
                                                               std::function<void()> on_release) {
  std::shared_ptr<DeviceModel> model(new DeviceModel());
  // Should a step below fail, the release runs (the model is dropped).
  ZC_RETURN_IF_ERROR(model->Init(std::move(info), std::move(manifest), std::move(on_release)));
  if (device.size() != model->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("device copy of ", device.size(), " bytes for a model of ", model->size()));
  }
  ZC_ASSIGN_OR_RETURN(int ordinal, GpuOrdinal(device.gpu_uuid()));
  ZC_ASSIGN_OR_RETURN(model->import_, DeviceImport::Get(device, ordinal));
  model->gpu_uuid_ = device.gpu_uuid();
  return model;
}

int DeviceModel::device_ordinal() const { return import_->ordinal(); }
bool DeviceModel::fake() const { return import_->fake(); }
void* DeviceModel::data() const { return import_ ? import_->data() : nullptr; }
DLDevice DeviceModel::dl_device() const { return fake() ? DLDevice{kDLCPU, 0} : DLDevice{kDLCUDA, device_ordinal()}; }

DeviceTensorView DeviceModel::tensor(size_t index) const {
  return DeviceTensorView{&manifest().tensors(static_cast<int>(index)), TensorAddress(index)};
}

absl::StatusOr<DeviceTensorView> DeviceModel::Find(const std::string& name) const {
  ZC_ASSIGN_OR_RETURN(size_t index, IndexOf(name));
  return tensor(index);
}

}  // namespace zerocopy
