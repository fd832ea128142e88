// ZipDirectory: the entries of a zip archive held in memory, from its
// central directory (ZIP64 included), each with where its bytes lie. Only
// what torch's archives need: names, compression method, and the data
// span of each entry, validated to lie inside the archive.
//
// Thread safety: a value type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace zerocopy {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;       // 0: stored (uncompressed)
  uint64_t data_offset = 0;  // of the entry's bytes in the archive
  uint64_t size = 0;         // compressed size (= size when stored)
};

// Errors: INVALID_ARGUMENT for a missing, truncated or malformed directory
// or an entry whose bytes lie outside the archive.
absl::StatusOr<std::vector<ZipEntry>> ReadZipDirectory(const uint8_t* data, size_t size);

}  // namespace zerocopy
