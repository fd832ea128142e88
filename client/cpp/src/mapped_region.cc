#include "zerocopy/mapped_region.h"

#include <sys/mman.h>

#include <cerrno>

#include "zerocopy/status.h"

namespace zerocopy {

MappedRegion& MappedRegion::operator=(MappedRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

absl::StatusOr<MappedRegion> MappedRegion::Map(int fd, size_t size, const Options& options) {
  if (size == 0) return MappedRegion();
  int prot = PROT_READ;
  int flags = MAP_SHARED;
  switch (options.access) {
    case Access::kReadOnly:
      break;
    case Access::kCopyOnWrite:
      prot |= PROT_WRITE;
      flags = MAP_PRIVATE;
      break;
    case Access::kReadWrite:
      prot |= PROT_WRITE;
      break;
  }
  if (options.populate) flags |= MAP_POPULATE;
  void* addr = ::mmap(nullptr, size, prot, flags, fd, 0);
  if (addr == MAP_FAILED) return ErrnoStatus(errno, "mmap");
  if (options.huge_pages) {
    // Advisory: tmpfs mounted with huge=advise uses huge pages only when
    // asked. Failure (kernel without THP) changes nothing but speed.
    ::madvise(addr, size, MADV_HUGEPAGE);
  }
  return MappedRegion(static_cast<uint8_t*>(addr), size);
}

void MappedRegion::Reset() {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace zerocopy
