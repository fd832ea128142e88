// DeviceModel: a model's shared device copy on one GPU, opened in this
// process through CUDA IPC (Client::MapDevice).
//
// The daemon makes one copy per model per GPU (same layout as the host
// segment) and leases it to this process's session; every process on that
// GPU opens the same memory. The handle is opened once per process and
// cached (CUDA refuses a second open of one allocation in a process on
// older drivers): DeviceModels of the same copy share it, and it is closed
// when the last of them, and the last DLPack tensor over it, is gone; then
// the lease is released.
//
// The memory is shared and WRITABLE (CUDA IPC maps it read-write): a
// process that writes into a weight changes it for every process on that
// GPU. Treat device weights as read-only.
//
// GPUs are named by UUID: the daemon's ordinal 0 is not this process's when
// CUDA_VISIBLE_DEVICES differs. device_ordinal() is this process's.
//
// Tests without a GPU: a daemon with gpu_backend = "fake" hands out shared
// files as "device" copies; a process sees the fake GPUs listed, in ordinal
// order, in $ZEROCOPY_FAKE_GPUS, and gets kDLCPU tensors over them.
//
// Thread safety: immutable after creation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "zerocopy/model_view.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

struct DeviceTensorView {
  const v1::Tensor* spec;
  void* data;  // device address of the first element
};

class DeviceImport;  // the opened handle, shared within the process

class DeviceModel final : public ModelView {
 public:
  // Opens the copy described by `device` (from GetModel) in this process.
  // `on_release` runs after the handle reference is dropped, or before Open
  // returns an error. Errors:
  // INVALID_ARGUMENT (manifest, handle), NOT_FOUND (this process does not
  // see the GPU), FAILED_PRECONDITION/INTERNAL (CUDA refused the handle),
  // UNIMPLEMENTED (built without CUDA).
  static absl::StatusOr<std::shared_ptr<DeviceModel>> Open(v1::ModelInfo info,
                                                           std::shared_ptr<const v1::Manifest> manifest,
                                                           const v1::DeviceCopy& device,
                                                           std::function<void()> on_release = nullptr);
  static absl::StatusOr<std::shared_ptr<DeviceModel>> Open(v1::ModelInfo info, v1::Manifest manifest,
                                                           const v1::DeviceCopy& device,
                                                           std::function<void()> on_release = nullptr) {
    return Open(std::move(info), std::make_shared<const v1::Manifest>(std::move(manifest)), device,
                std::move(on_release));
  }

  const std::string& gpu_uuid() const { return gpu_uuid_; }
  int device_ordinal() const;  // this process's ordinal of the GPU
  bool fake() const;           // a test backend's copy (host memory)
  void* data() const;          // device address of the copy

  DeviceTensorView tensor(size_t index) const;
  // Errors: NOT_FOUND.
  absl::StatusOr<DeviceTensorView> Find(const std::string& name) const;
  // DLPack exports (ModelView) are kDLCUDA on this process's ordinal;
  // kDLCPU for a fake copy.

 private:
  DeviceModel() = default;
  uint8_t* base() const override { return static_cast<uint8_t*>(data()); }
  DLDevice dl_device() const override;

  std::string gpu_uuid_;
  std::shared_ptr<DeviceImport> import_;  // dropped before ModelView's destructor gives the lease back
};

// This process's ordinal of GPU `uuid`, and the UUID of ordinal `ordinal`
// ($ZEROCOPY_FAKE_GPUS when set, else CUDA). Errors: NOT_FOUND,
// UNIMPLEMENTED (no CUDA in this build), UNAVAILABLE (no GPU).
absl::StatusOr<int> GpuOrdinal(const std::string& uuid);
absl::StatusOr<std::string> GpuUuid(int ordinal);

}  // namespace zerocopy
