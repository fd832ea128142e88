// SafetensorsFile: a validated view of a .safetensors file.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
//  "__metadata__": {"k": "v"}}, then the data region. Every rule is checked
// before a byte of tensor data is trusted: header length within the file,
// JSON well-formed and shallow, known dtypes, non-negative shapes, offsets
// inside the data region, element count x dtype size = byte length
// (overflow-checked), no two tensors overlapping.
//
// Thread safety: immutable after creation; safe to share.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/dtype.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/model_source.h"

namespace zerocopy {

class SafetensorsFile {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data;  // inside the file's bytes
    uint64_t size;        // bytes
  };

  // Maps the file read-only and parses it. Errors: NOT_FOUND /
  // PERMISSION_DENIED opening it, INVALID_ARGUMENT for any format violation
  // (the message names the file and the rule).
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  // Parses bytes the caller owns and keeps alive while this object is used.
  static absl::StatusOr<SafetensorsFile> Parse(const uint8_t* data, size_t size);

  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;

  // Tensors sorted by name.
  const std::vector<Entry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t data_bytes() const { return data_bytes_; }

  // One storage per tensor, contiguous; __metadata__ as a JSON object in
  // manifest.metadata; format "safetensors". Points into this file's bytes.
  ModelSource ToModelSource() const;

 private:
  SafetensorsFile() = default;
  std::shared_ptr<MappedRegion> region_;  // when opened from a path
  std::vector<Entry> tensors_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
};

}  // namespace zerocopy
