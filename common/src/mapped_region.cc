#include "zerocopy/mapped_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older C library headers lack the names
#endif

namespace zerocopy {

namespace {

// madvise(2) over [offset, offset + length) of a mapping at `data`, its
// start rounded down to a page (the mapping starts on one).
int AdvisePages(uint8_t* data, uint64_t offset, uint64_t length, int advice) {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset / page * page;
  return ::madvise(data + begin, offset + length - begin, advice);
}

absl::Status Populate(uint8_t* data, size_t size, uint64_t offset, uint64_t length, int advice) {
  if (offset > size || length > size - offset) {
    return absl::OutOfRangeError(
        absl::StrCat("populate ", length, " bytes at ", offset, " of a ", size, "-byte mapping"));
  }
  if (length == 0) return absl::OkStatus();
  for (;;) {
    if (AdvisePages(data, offset, length, advice) == 0) return absl::OkStatus();
    switch (errno) {
      case EINTR:
      case EAGAIN: continue;
      case EINVAL: return absl::UnimplementedError("this kernel has no MADV_POPULATE_READ (Linux 5.14)");
      case EFAULT:
      case ENOMEM:
      case ENOSPC:
        return absl::ResourceExhaustedError(
            absl::StrCat("no memory to map ", length, " bytes of the segment: ", std::strerror(errno)));
      default: return ErrnoStatus(errno, "madvise(MADV_POPULATE_READ)");
    }
  }
}

}  // namespace

absl::Status MappedRegion::PopulateForRead(uint64_t offset, uint64_t length) const {
  return Populate(data_, size_, offset, length, MADV_POPULATE_READ);
}

MappedRegion& MappedRegion::operator=(MappedRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

absl::StatusOr<MappedRegion> MappedRegion::MapFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  return Map(fd.get(), static_cast<size_t>(st.st_size), Options{});
}

absl::StatusOr<MappedRegion> MappedRegion::Map(int fd, size_t size, const Options& options) {
  if (size == 0) return MappedRegion();
  int prot = PROT_READ;
  int flags = MAP_SHARED;
  switch (options.access) {
    case Access::kReadOnly: break;
    case Access::kCopyOnWrite:
      prot |= PROT_WRITE;
      flags = MAP_PRIVATE;
      break;
    case Access::kReadWrite: prot |= PROT_WRITE; break;
  }
  if (options.populate) flags |= MAP_POPULATE;
  void* addr = ::mmap(nullptr, size, prot, flags, fd, 0);
  if (addr == MAP_FAILED) return ErrnoStatus(errno, "mmap");
  return MappedRegion(static_cast<uint8_t*>(addr), size);
}

void MappedRegion::Reset() {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace zerocopy
