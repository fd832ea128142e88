// MappedRegion: sole owner of one mmap(2) mapping. Move-only; unmaps on
// destruction. Not thread-safe (a value type); the bytes it maps may be
// read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace zerocopy {

class MappedRegion {
 public:
  enum class Access {
    kReadOnly,     // PROT_READ, MAP_SHARED: a write faults
    kCopyOnWrite,  // PROT_READ|PROT_WRITE, MAP_PRIVATE: writes stay private
    kReadWrite,    // PROT_READ|PROT_WRITE, MAP_SHARED: writes reach the file
  };
  struct Options {
    Access access = Access::kReadOnly;
    bool populate = false;  // MAP_POPULATE: fault every page in now
  };

  MappedRegion() = default;
  MappedRegion(MappedRegion&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  MappedRegion& operator=(MappedRegion&& other) noexcept;
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion() { Reset(); }

  // Maps `size` bytes of `fd` from offset 0. A zero size gives an empty
  // region (no mapping). Errors: INTERNAL / RESOURCE_EXHAUSTED from mmap.
  static absl::StatusOr<MappedRegion> Map(int fd, size_t size, const Options& options);

  // Maps a whole regular file read-only (model files the caller parses).
  // Errors: NOT_FOUND / PERMISSION_DENIED naming the path, INVALID_ARGUMENT
  // when it is not a regular file.
  static absl::StatusOr<MappedRegion> MapFile(const std::string& path);

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  void Reset();

  // Maps [offset, offset + length) of the mapping's pages in one call
  // (MADV_POPULATE_READ) rather than a fault at a time. Errors:
  // UNIMPLEMENTED on a kernel before 5.14, OUT_OF_RANGE past the end.
  absl::Status PopulateForRead(uint64_t offset, uint64_t length) const;

 private:
  MappedRegion(uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace zerocopy
