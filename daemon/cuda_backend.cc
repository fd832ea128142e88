// The "cuda" and "off" device backends (device_backend.h).
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "device_backend.h"
#include "log.h"
#include "zerocopy/byte_size.h"
#include "zerocopy/cuda_device.h"
#include "zerocopy/status.h"

namespace zerocopy::daemon {

namespace {

// ---- cuda --------------------------------------------------------------

class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(std::unique_ptr<cuda::Allocation> allocation, std::string handle)
      : allocation_(std::move(allocation)), handle_(std::move(handle)) {}
  const std::string& handle() const override { return handle_; }

 private:
  std::unique_ptr<cuda::Allocation> allocation_;
  std::string handle_;
};

class CudaBackend final : public DeviceBackend {
 public:
  std::string name() const override { return "cuda"; }

  absl::StatusOr<uint64_t> TotalMemory(const std::string& uuid) override {
    ZC_ASSIGN_OR_RETURN(cuda::Gpu gpu, Find(uuid));
    return gpu.total_memory;
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const std::string& uuid, const uint8_t* host,
                                                       uint64_t size) override {
    ZC_ASSIGN_OR_RETURN(cuda::Gpu gpu, Find(uuid));
    cuda::UploadInfo info;
    ZC_ASSIGN_OR_RETURN(auto allocation, cuda::Upload(gpu.ordinal, host, size, &info));
    ZC_ASSIGN_OR_RETURN(std::string handle, allocation->ExportHandle());
    Log().info("device copy on {} ({}): {} at {:.2f} GiB/s ({})", uuid, gpu.name, FormatBytes(size),
               info.bytes_per_second / (1 << 30), info.method);
    return std::unique_ptr<DeviceBuffer>(new CudaBuffer(std::move(allocation), std::move(handle)));
  }

 private:
  absl::StatusOr<cuda::Gpu> Find(const std::string& uuid) {
    absl::MutexLock lock(&mu_);
    if (gpus_.empty()) {
      auto gpus = cuda::Gpus();
      if (absl::IsUnavailable(gpus.status())) {
        return absl::FailedPreconditionError(absl::StrCat("zerocopyd sees no GPU: ", gpus.status().message()));
      }
      if (!gpus.ok()) return gpus.status();
      gpus_ = *std::move(gpus);
    }
    std::vector<std::string> known;
    for (const auto& g : gpus_) {
      if (g.uuid == uuid) return g;
      known.push_back(g.uuid);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("zerocopyd sees no GPU ", uuid, " (it sees ", absl::StrJoin(known, ", "),
                     "; run it without CUDA_VISIBLE_DEVICES so that it sees every GPU)"));
  }

  absl::Mutex mu_;
  std::vector<cuda::Gpu> gpus_ ABSL_GUARDED_BY(mu_);  // the node's GPUs do not change while we run
};

// ---- off ---------------------------------------------------------------

class OffBackend final : public DeviceBackend {
 public:
  std::string name() const override { return "off"; }
  absl::StatusOr<uint64_t> TotalMemory(const std::string&) override { return Off(); }
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const std::string&, const uint8_t*, uint64_t) override {
    return Off();
  }

 private:
  static absl::Status Off() {
    return absl::UnimplementedError("GPU sharing is off in this zerocopyd (gpu_backend = \"off\" in its config)");
  }
};

}  // namespace

std::unique_ptr<DeviceBackend> MakeCudaBackend() { return std::make_unique<CudaBackend>(); }
std::unique_ptr<DeviceBackend> MakeOffBackend() { return std::make_unique<OffBackend>(); }

}  // namespace zerocopy::daemon
