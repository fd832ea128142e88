// The "fake" device backend (device_backend.h), for tests: each copy is a
// file in host memory that clients map by the handle common/'s fake_gpu.h
// defines.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "device_backend.h"
#include "ids.h"
#include "zerocopy/fake_gpu.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy::daemon {

namespace {

// ---- fake (tests) -------------------------------------------------------

class FakeBuffer final : public DeviceBuffer {
 public:
  explicit FakeBuffer(std::string path) : path_(std::move(path)), handle_(fake_gpu::Handle(path_)) {}
  ~FakeBuffer() override { ::unlink(path_.c_str()); }
  const std::string& handle() const override { return handle_; }

 private:
  std::string path_;
  std::string handle_;
};

class FakeBackend final : public DeviceBackend {
 public:
  FakeBackend(std::vector<std::string> uuids, uint64_t memory, std::string dir)
      : uuids_(std::move(uuids)), memory_(memory), dir_(std::move(dir)) {
    ::mkdir(dir_.c_str(), 0755);
  }
  std::string name() const override { return fake_gpu::kBackend; }

  absl::StatusOr<uint64_t> TotalMemory(const std::string& uuid) override {
    if (std::find(uuids_.begin(), uuids_.end(), uuid) == uuids_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("zerocopyd sees no GPU ", uuid, " (fake GPUs: ", absl::StrJoin(uuids_, ", "), ")"));
    }
    return memory_;
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const std::string& uuid, const uint8_t* host,
                                                       uint64_t size) override {
    ZC_RETURN_IF_ERROR(TotalMemory(uuid).status());
    std::string path = absl::StrCat(dir_, "/", RandomId());
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) return ErrnoStatus(errno, absl::StrCat("fake GPU: create ", path));
    auto buffer = std::make_unique<FakeBuffer>(path);  // unlinks on failure
    if (size > 0) {
      if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) return ErrnoStatus(errno, "fake GPU: ftruncate");
      void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
      if (p == MAP_FAILED) return ErrnoStatus(errno, "fake GPU: mmap");
      std::memcpy(p, host, size);
      ::munmap(p, size);
    }
    return std::unique_ptr<DeviceBuffer>(std::move(buffer));
  }

 private:
  const std::vector<std::string> uuids_;
  const uint64_t memory_;
  const std::string dir_;
};

}  // namespace

std::unique_ptr<DeviceBackend> MakeFakeBackend(std::vector<std::string> uuids, uint64_t memory, std::string dir) {
  return std::make_unique<FakeBackend>(std::move(uuids), memory, std::move(dir));
}

}  // namespace zerocopy::daemon
