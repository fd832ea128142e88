#include "zerocopy/mapped_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy {

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
