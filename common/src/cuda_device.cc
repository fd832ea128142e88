#include "zerocopy/cuda_device.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

#ifdef ZEROCOPY_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>

#include "zerocopy/status.h"
#endif

namespace zerocopy::cuda {

bool IsGpuUuid(const std::string& uuid) {
  // GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
  static constexpr char kShape[] = "GPU-........-....-....-....-............";
  if (uuid.size() != sizeof kShape - 1) return false;
  for (size_t i = 0; i < uuid.size(); ++i) {
    if (kShape[i] == '.') {
      if (!std::isxdigit(static_cast<unsigned char>(uuid[i])) || std::isupper(static_cast<unsigned char>(uuid[i]))) {
        return false;
      }
    } else if (uuid[i] != kShape[i]) {
      return false;
    }
  }
  return true;
}

#ifndef ZEROCOPY_HAVE_CUDA

namespace {
absl::Status NotBuilt() {
  return absl::UnimplementedError("built without CUDA (configure with -DZEROCOPY_WITH_CUDA=ON and a CUDA toolkit)");
}
}  // namespace

bool Compiled() { return false; }
absl::StatusOr<std::vector<Gpu>> Gpus() { return NotBuilt(); }
absl::StatusOr<int> OrdinalOf(const std::string&) { return NotBuilt(); }
absl::StatusOr<std::unique_ptr<Allocation>> Upload(int, const uint8_t*, uint64_t, UploadInfo*) { return NotBuilt(); }
absl::StatusOr<std::unique_ptr<Import>> OpenHandle(int, const std::string&) { return NotBuilt(); }
absl::StatusOr<std::pair<uint64_t, uint64_t>> MemoryInfo(int) { return NotBuilt(); }
absl::Status CopyToHost(int, const void*, void*, uint64_t) { return NotBuilt(); }

#else

namespace {

absl::Status Check(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  if (e == cudaErrorDevicesUnavailable) {  // exclusive-process mode, or MPS refusing this process
    return absl::FailedPreconditionError(message);
  }
  if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e == cudaErrorInitializationError) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

// Whether the calling thread has a current CUDA context (the driver's
// cuCtxGetCurrent, reached through the runtime: no link to libcuda).
bool HasCurrentContext() {
  using CtxGetCurrent = int (*)(void**);
  static CtxGetCurrent get = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<CtxGetCurrent>(nullptr);
    }
    return reinterpret_cast<CtxGetCurrent>(fn);
  }();
  void* ctx = nullptr;
  return get != nullptr && get(&ctx) == 0 && ctx != nullptr;
}

// Makes `ordinal` current for the scope, then restores the caller's device
// if the caller had one: a thread that had no context is not given one on
// GPU 0 on the way out (cudaSetDevice creates the primary context).
class DeviceScope {
 public:
  explicit DeviceScope(int ordinal) {
    had_ = HasCurrentContext() && cudaGetDevice(&previous_) == cudaSuccess && previous_ != ordinal;
    status_ = Check(cudaSetDevice(ordinal), absl::StrCat("cudaSetDevice(", ordinal, ")"));
  }
  ~DeviceScope() {
    if (had_) cudaSetDevice(previous_);
  }
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = 0;
  bool had_ = false;
  absl::Status status_;
};

std::string FormatUuid(const cudaUUID_t& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  return absl::StrFormat("GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                         b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

class CudaAllocation final : public Allocation {
 public:
  CudaAllocation(int ordinal, void* data, uint64_t size) : ordinal_(ordinal), data_(data), size_(size) {}
  ~CudaAllocation() override {
    DeviceScope scope(ordinal_);
    cudaFree(data_);
  }
  void* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  absl::StatusOr<std::string> ExportHandle() const override {
    DeviceScope scope(ordinal_);
    if (!scope.status().ok()) return scope.status();
    cudaIpcMemHandle_t handle;
    if (auto s = Check(cudaIpcGetMemHandle(&handle, data_), "cudaIpcGetMemHandle"); !s.ok()) return s;
    return std::string(reinterpret_cast<const char*>(&handle), sizeof handle);
  }

 private:
  int ordinal_;
  void* data_;
  uint64_t size_;
};

class CudaImport final : public Import {
 public:
  CudaImport(int ordinal, void* data) : ordinal_(ordinal), data_(data) {}
  ~CudaImport() override {
    DeviceScope scope(ordinal_);
    cudaIpcCloseMemHandle(data_);
  }
  void* data() const override { return data_; }
  int ordinal() const override { return ordinal_; }

 private:
  int ordinal_;
  void* data_;
};

// Copies through two pinned buffers: the CPU fills one while the copy
// engine drains the other. Pageable memory would otherwise be staged by the
// driver through its own small buffer, at a fraction of the link's speed.
absl::Status StagedCopy(uint8_t* device, const uint8_t* host, uint64_t size) {
  constexpr uint64_t kChunk = 64ull << 20;
  const uint64_t chunk = std::min<uint64_t>(kChunk, std::max<uint64_t>(size, 1));
  void* pinned[2] = {nullptr, nullptr};
  cudaStream_t stream = nullptr;
  cudaEvent_t done[2] = {nullptr, nullptr};
  absl::Status status = Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  for (int b = 0; b < 2 && status.ok(); ++b) {
    status = Check(cudaHostAlloc(&pinned[b], chunk, cudaHostAllocDefault), "cudaHostAlloc (staging)");
    if (status.ok()) status = Check(cudaEventCreateWithFlags(&done[b], cudaEventDisableTiming), "cudaEventCreate");
  }
  bool used[2] = {false, false};
  for (uint64_t offset = 0, i = 0; status.ok() && offset < size; offset += chunk, ++i) {
    const int b = static_cast<int>(i % 2);
    const uint64_t n = std::min(chunk, size - offset);
    if (used[b]) status = Check(cudaEventSynchronize(done[b]), "cudaEventSynchronize");
    if (!status.ok()) break;
    std::memcpy(pinned[b], host + offset, n);
    status = Check(cudaMemcpyAsync(device + offset, pinned[b], n, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    if (status.ok()) status = Check(cudaEventRecord(done[b], stream), "cudaEventRecord");
    used[b] = true;
  }
  if (stream != nullptr) {
    absl::Status synced = Check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    if (status.ok()) status = synced;
    cudaStreamDestroy(stream);
  }
  for (int b = 0; b < 2; ++b) {
    if (done[b] != nullptr) cudaEventDestroy(done[b]);
    if (pinned[b] != nullptr) cudaFreeHost(pinned[b]);
  }
  return status;
}

}  // namespace

bool Compiled() { return true; }

absl::StatusOr<std::vector<Gpu>> QueryGpus() {
  int count = 0;
  if (auto s = Check(cudaGetDeviceCount(&count), "cudaGetDeviceCount"); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("no usable GPU: ", s.message()));
  }
  std::vector<Gpu> gpus;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (auto s = Check(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties"); !s.ok()) return s;
    gpus.push_back(Gpu{i, FormatUuid(prop.uuid), prop.name, prop.totalGlobalMem});
  }
  return gpus;
}

absl::StatusOr<std::vector<Gpu>> Gpus() {
  // The GPUs a process sees do not change while it runs, and
  // cudaGetDeviceProperties is slow: ask once per process (after fork, anew).
  static std::mutex mu;
  static pid_t owner = 0;
  static std::vector<Gpu>* cached = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (cached != nullptr && owner == ::getpid()) return *cached;
  ZC_ASSIGN_OR_RETURN(auto gpus, QueryGpus());
  delete cached;
  cached = new std::vector<Gpu>(gpus);
  owner = ::getpid();
  return gpus;
}

absl::StatusOr<int> OrdinalOf(const std::string& uuid) {
  auto gpus = Gpus();
  if (!gpus.ok()) return gpus.status();
  for (const Gpu& g : *gpus) {
    if (g.uuid == uuid) return g.ordinal;
  }
  return absl::NotFoundError(
      absl::StrCat("no GPU ", uuid, " among the ", gpus->size(), " this process sees (CUDA_VISIBLE_DEVICES=",
                   getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset", ")"));
}

absl::StatusOr<std::unique_ptr<Allocation>> Upload(int ordinal, const uint8_t* host, uint64_t size, UploadInfo* info) {
  DeviceScope scope(ordinal);
  if (!scope.status().ok()) return scope.status();
  auto t0 = std::chrono::steady_clock::now();
  void* device = nullptr;
  // At least one allocation granule, so that even an empty model has an
  // address to export.
  if (auto s = Check(cudaMalloc(&device, std::max<uint64_t>(size, 256)),
                     absl::StrCat("cudaMalloc(", size, " bytes) on GPU ", ordinal));
      !s.ok()) {
    return s;
  }
  auto allocation = std::make_unique<CudaAllocation>(ordinal, device, size);

  // Fastest: pin the host bytes where they are and let the copy engine read
  // them directly. A mapping the driver will not pin (some file systems,
  // old drivers) goes through pinned staging buffers instead.
  absl::Status status;
  bool registered = size > 0 && cudaHostRegister(const_cast<uint8_t*>(host), size,
                                                 cudaHostRegisterPortable | cudaHostRegisterReadOnly) == cudaSuccess;
  if (registered) {
    status = Check(cudaMemcpy(device, host, size, cudaMemcpyHostToDevice), "cudaMemcpy (registered host memory)");
    cudaHostUnregister(const_cast<uint8_t*>(host));
  } else {
    cudaGetLastError();  // the failed registration
    status = StagedCopy(static_cast<uint8_t*>(device), host, size);
  }
  if (!status.ok()) return status;  // `allocation` frees the device memory
  if (info != nullptr) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    info->bytes_per_second = s > 0 ? static_cast<double>(size) / s : 0;
    info->method = registered ? "registered" : "staged";
  }
  return std::unique_ptr<Allocation>(std::move(allocation));
}

absl::StatusOr<std::unique_ptr<Import>> OpenHandle(int ordinal, const std::string& handle) {
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a CUDA IPC handle is ", sizeof(cudaIpcMemHandle_t), " bytes, not ", handle.size()));
  }
  DeviceScope scope(ordinal);
  if (!scope.status().ok()) return scope.status();
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.data(), sizeof h);
  void* data = nullptr;
  if (auto s = Check(cudaIpcOpenMemHandle(&data, h, cudaIpcMemLazyEnablePeerAccess),
                     absl::StrCat("cudaIpcOpenMemHandle on GPU ", ordinal));
      !s.ok()) {
    // CUDA refuses handles across MPS boundaries and IPC/PID namespaces: a
    // condition of the deployment, on which callers fall back.
    return absl::FailedPreconditionError(
        absl::StrCat(s.message(),
                     "; CUDA refused the daemon's handle (MPS servers differ, or the container lacks --ipc=host "
                     "--pid=host)"));
  }
  return std::unique_ptr<Import>(new CudaImport(ordinal, data));
}

absl::StatusOr<std::pair<uint64_t, uint64_t>> MemoryInfo(int ordinal) {
  DeviceScope scope(ordinal);
  if (!scope.status().ok()) return scope.status();
  size_t free_bytes = 0, total = 0;
  if (auto s = Check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo"); !s.ok()) return s;
  return std::pair<uint64_t, uint64_t>(free_bytes, total);
}

absl::Status CopyToHost(int ordinal, const void* device, void* host, uint64_t size) {
  DeviceScope scope(ordinal);
  if (!scope.status().ok()) return scope.status();
  return Check(cudaMemcpy(host, device, size, cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)");
}

#endif  // ZEROCOPY_HAVE_CUDA

}  // namespace zerocopy::cuda
