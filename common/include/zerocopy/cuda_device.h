// zerocopy::cuda: every CUDA call of the project, in this one file pair.
// Built with CUDA when ZEROCOPY_WITH_CUDA is on (the toolkit in
// /usr/local/cuda; the runtime is linked statically, so nothing CUDA is
// needed at run time but the driver). Built without it, every function
// answers UNIMPLEMENTED and Compiled() is false.
//
// The daemon exports (Upload + Export), clients import (Import). GPUs are
// named by UUID ("GPU-8b1cf26a-..."); ordinals are this process's own
// (CUDA_VISIBLE_DEVICES applies).
//
// Errors: UNIMPLEMENTED (built without CUDA), UNAVAILABLE (no driver, no
// GPU: any error of cudaGetDeviceCount), NOT_FOUND (no GPU with that UUID
// in this process), RESOURCE_EXHAUSTED (out of device memory), INTERNAL
// (any other CUDA error, with its name).
//
// Thread safety: all functions may be called from any thread; they restore
// the calling thread's current device.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace zerocopy::cuda {

constexpr size_t kIpcHandleSize = 64;  // sizeof(cudaIpcMemHandle_t)

bool Compiled();

struct Gpu {
  int ordinal = 0;
  std::string uuid;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
  std::string name;
  uint64_t total_memory = 0;
};

// The GPUs this process sees, by ordinal.
absl::StatusOr<std::vector<Gpu>> Gpus();
// This process's ordinal of the GPU with `uuid`. Errors: NOT_FOUND.
absl::StatusOr<int> OrdinalOf(const std::string& uuid);

// Whether `uuid` is spelled as CUDA spells GPU UUIDs.
bool IsGpuUuid(const std::string& uuid);

// Device memory owned by this process; freed by the destructor.
class Allocation {
 public:
  virtual ~Allocation() = default;
  virtual void* data() const = 0;
  virtual uint64_t size() const = 0;
  // The cudaIpcMemHandle_t of the allocation (kIpcHandleSize bytes).
  virtual absl::StatusOr<std::string> ExportHandle() const = 0;
};

// How an upload went.
struct UploadInfo {
  double bytes_per_second = 0;
  const char* method = "";  // "registered" (host bytes pinned in place) or "staged" (through pinned buffers)
};

// One cudaMalloc of `size` bytes on GPU `ordinal`, filled from `host`: the
// host bytes pinned where they are (cudaHostRegister) when the driver
// allows, else copied through pinned staging buffers.
absl::StatusOr<std::unique_ptr<Allocation>> Upload(int ordinal, const uint8_t* host, uint64_t size,
                                                   UploadInfo* info = nullptr);

// Another process's allocation, opened through its IPC handle on GPU
// `ordinal` (cudaIpcOpenMemHandle); closed by the destructor. CUDA allows
// one open handle per allocation per process: callers cache.
class Import {
 public:
  virtual ~Import() = default;
  virtual void* data() const = 0;
  virtual int ordinal() const = 0;
};
absl::StatusOr<std::unique_ptr<Import>> OpenHandle(int ordinal, const std::string& handle);

// (free, total) bytes of GPU `ordinal` (cudaMemGetInfo).
absl::StatusOr<std::pair<uint64_t, uint64_t>> MemoryInfo(int ordinal);

// Copies `size` bytes from device memory to the host (tests, verify).
absl::Status CopyToHost(int ordinal, const void* device, void* host, uint64_t size);

}  // namespace zerocopy::cuda
