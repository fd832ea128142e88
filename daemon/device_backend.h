// DeviceBackend: what makes and frees device copies for the DevicePool,
// the one seam between the pool's rules and the hardware:
//   "cuda"  cudaMalloc, upload through pinned buffers, cudaIpcGetMemHandle
//           (cuda_backend.cc over common/'s cuda_device.h; UNIMPLEMENTED per
//           request when built without CUDA),
//   "fake"  tests: host memory in shared files behind the same interface,
//           so leases, budgets, eviction and concurrency run where there is
//           no GPU (fake_backend.cc; the protocol is common/'s fake_gpu.h),
//   "off"   every request: UNIMPLEMENTED (cuda_backend.cc).
//
// Thread safety: a backend's methods may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace zerocopy::daemon {

// Device memory holding one model; freed by the destructor.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  // What a client opens: a cudaIpcMemHandle_t for "cuda".
  virtual const std::string& handle() const = 0;
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual std::string name() const = 0;
  // The memory of GPU `uuid`. Errors: NOT_FOUND (no such GPU here),
  // UNIMPLEMENTED (no GPU support), UNAVAILABLE (no driver or GPU).
  virtual absl::StatusOr<uint64_t> TotalMemory(const std::string& uuid) = 0;
  // A new device allocation on GPU `uuid` holding `size` bytes from `host`.
  // Errors: those of TotalMemory, RESOURCE_EXHAUSTED (device memory).
  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const std::string& uuid, const uint8_t* host,
                                                               uint64_t size) = 0;
};

// "cuda" (UNIMPLEMENTED per request when built without CUDA) and "off".
std::unique_ptr<DeviceBackend> MakeCudaBackend();
std::unique_ptr<DeviceBackend> MakeOffBackend();
// Tests: GPUs `uuids` of `memory` bytes each; copies are files in `dir`
// (created if missing) that clients map, named by the handle
// ("fake:" + path).
std::unique_ptr<DeviceBackend> MakeFakeBackend(std::vector<std::string> uuids, uint64_t memory, std::string dir);

}  // namespace zerocopy::daemon
