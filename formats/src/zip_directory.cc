#include "zerocopy/zip_directory.h"

#include "absl/strings/str_cat.h"
#include "little_endian.h"

namespace zerocopy {

namespace {

using internal::Le16;
using internal::Le32;
using internal::Le64;

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

constexpr uint32_t kEndSig = 0x06054b50, kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50,
                   kCentralSig = 0x02014b50, kLocalSig = 0x04034b50;
constexpr size_t kEndSize = 22, kCentralSize = 46, kLocalSize = 30;

}  // namespace

absl::StatusOr<std::vector<ZipEntry>> ReadZipDirectory(const uint8_t* data, size_t size) {
  if (size < kEndSize) return Invalid("zip archive too short for its end-of-directory record (truncated?)");
  // The end record sits in the last 22 + 65535 (comment) bytes.
  size_t lowest = size > kEndSize + 0xffff ? size - kEndSize - 0xffff : 0;
  size_t end = SIZE_MAX;
  for (size_t i = size - kEndSize + 1; i-- > lowest;) {
    if (Le32(data + i) == kEndSig) {
      end = i;
      break;
    }
  }
  if (end == SIZE_MAX) return Invalid("zip archive has no end-of-directory record (truncated?)");
  uint64_t count = Le16(data + end + 10);
  uint64_t dir_size = Le32(data + end + 12);
  uint64_t dir_offset = Le32(data + end + 16);
  const bool has_locator = end >= 20 && Le32(data + end - 20) == kZip64LocatorSig;
  if (dir_size == 0xffffffff || dir_offset == 0xffffffff || (count == 0xffff && has_locator)) {
    // ZIP64: a locator right before the end record points at the real one.
    // (Exactly 65535 entries without one is a plain archive.)
    if (!has_locator) return Invalid("zip64 archive without its locator");
    uint64_t z64 = Le64(data + end - 20 + 8);
    if (z64 > size || size - z64 < 56 || Le32(data + z64) != kZip64EndSig) {
      return Invalid("zip64 end-of-directory record lies outside the archive");
    }
    count = Le64(data + z64 + 32);
    dir_size = Le64(data + z64 + 40);
    dir_offset = Le64(data + z64 + 48);
  }
  if (dir_offset > size || dir_size > size - dir_offset) {
    return Invalid("zip central directory lies outside the archive (truncated?)");
  }
  if (count > dir_size / kCentralSize) return Invalid("zip central directory is smaller than its entry count says");

  std::vector<ZipEntry> entries;
  entries.reserve(static_cast<size_t>(count));
  const uint8_t* p = data + dir_offset;
  const uint8_t* dir_end = p + dir_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (static_cast<size_t>(dir_end - p) < kCentralSize || Le32(p) != kCentralSig) {
      return Invalid(absl::StrCat("zip central directory entry ", i, " is malformed"));
    }
    size_t name_len = Le16(p + 28), extra_len = Le16(p + 30), comment_len = Le16(p + 32);
    if (static_cast<size_t>(dir_end - p) < kCentralSize + name_len + extra_len + comment_len) {
      return Invalid(absl::StrCat("zip central directory entry ", i, " runs past the directory"));
    }
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(p + kCentralSize), name_len);
    e.method = Le16(p + 10);
    uint64_t compressed = Le32(p + 20), uncompressed = Le32(p + 24), local = Le32(p + 42);
    // ZIP64 extra field: the 64-bit values, in this order, of those that are
    // 0xffffffff above.
    const uint8_t* x = p + kCentralSize + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      uint16_t id = Le16(x), len = Le16(x + 2);
      if (x_end - x - 4 < len) return Invalid(absl::StrCat("zip entry '", e.name, "' has a truncated extra field"));
      if (id == 0x0001) {
        const uint8_t* v = x + 4;
        const uint8_t* v_end = v + len;
        for (uint64_t* field : {&uncompressed, &compressed, &local}) {
          if (*field != 0xffffffff) continue;
          if (v_end - v < 8) return Invalid(absl::StrCat("zip entry '", e.name, "' has a short zip64 field"));
          *field = Le64(v);
          v += 8;
        }
      }
      x += 4 + len;
    }
    if (local > size || size - local < kLocalSize || Le32(data + local) != kLocalSig) {
      return Invalid(absl::StrCat("zip entry '", e.name, "' has no local header inside the archive (truncated?)"));
    }
    uint64_t start = local + kLocalSize + Le16(data + local + 26) + Le16(data + local + 28);
    if (start > size || compressed > size - start) {
      return Invalid(absl::StrCat("zip entry '", e.name, "' holds ", compressed, " bytes at offset ", start,
                                  ", past the end of the ", size, "-byte archive (truncated?)"));
    }
    if (e.method == 0 && compressed != uncompressed) {
      return Invalid(absl::StrCat("zip entry '", e.name, "' is stored but its sizes differ"));
    }
    e.data_offset = start;
    e.size = compressed;
    entries.push_back(std::move(e));
    p += kCentralSize + name_len + extra_len + comment_len;
  }
  return entries;
}

}  // namespace zerocopy
