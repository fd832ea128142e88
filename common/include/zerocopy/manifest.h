// Manifest rules shared by the daemon (which enforces them) and the clients
// (which build manifests): segment layout, validation, and names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

using Manifest = ::zerocopy::v1::Manifest;

// Every storage starts at a multiple of this in the segment: enough for any
// dtype, AVX-512 loads and DLPack consumers that want aligned data.
inline constexpr uint64_t kStorageAlignment = 64;

// Limits on what one manifest may describe. The defaults allow large
// real-world checkpoints (100,000+ tensors) while bounding daemon memory.
struct ManifestLimits {
  uint64_t max_tensors = 1'000'000;
  uint64_t max_storages = 1'000'000;
  uint64_t max_rank = 32;
  uint64_t max_tensor_name = 4096;
  uint64_t max_metadata = 256ull << 20;
  uint64_t max_total_size = 1ull << 50;
  uint64_t max_files = 10'000;
  uint64_t max_file_bytes = 1ull << 30;  // all files together
};

// Checks every rule a manifest must follow, without looking at offsets the
// daemon assigns: storage count and sizes, tensors inside their storages
// (overflow-checked), dtypes, shapes, strides, unique non-empty names
// without NUL; files with valid names (ValidateFileName), each the only
// user of its storage (no tensor, no other file). Errors: INVALID_ARGUMENT
// naming the offending tensor or file.
absl::Status ValidateManifest(const Manifest& manifest, const ManifestLimits& limits = ManifestLimits());

// Assigns each storage its aligned offset and sets total_size. Errors:
// INVALID_ARGUMENT when the total overflows the limit.
absl::Status AssignOffsets(Manifest* manifest, const ManifestLimits& limits = ManifestLimits());

// Checks that storage offsets are exactly what AssignOffsets gives (used
// when reading a manifest back from disk or from the daemon).
absl::Status CheckLayout(const Manifest& manifest);

// Bytes a tensor view spans from its byte_offset (0 for an empty tensor).
// Errors: INVALID_ARGUMENT on overflow or negative dims/strides.
absl::StatusOr<uint64_t> TensorExtent(const ::zerocopy::v1::Tensor& tensor);

// True if the tensor's strides are row-major contiguous (or empty).
bool IsContiguous(const ::zerocopy::v1::Tensor& tensor);

// True if the tensor is contiguous from the first byte of `storage` to its
// last: it is the whole storage (the common case: a storage per parameter).
bool CoversStorage(const ::zerocopy::v1::Tensor& tensor, const ::zerocopy::v1::Storage& storage);

// Model names (tags): 1-255 characters from [A-Za-z0-9._:@+=-], not
// starting with '.', '-' or ':', and not 32 hex digits (those are digests).
// Errors: INVALID_ARGUMENT saying which rule is broken.
absl::Status ValidateModelName(absl::string_view name);

// The name of a file kept with a model: a relative path of 1-1024 bytes,
// '/'-separated parts of 1-255 bytes each, none "." or "..", no NUL or
// control characters, valid UTF-8. Errors: INVALID_ARGUMENT saying which
// rule is broken.
absl::Status ValidateFileName(absl::string_view name);

// True for 32 lowercase hex digits.
bool IsDigest(absl::string_view s);

// How a model arrived (kept with it, shown by `zerocopy ls`): kind at most
// 32 and source at most kMaxOriginSource bytes of UTF-8 text without
// control characters, duration not negative. Errors: INVALID_ARGUMENT
// saying which rule is broken.
inline constexpr size_t kMaxOriginSource = 4096;
absl::Status ValidateOrigin(const ::zerocopy::v1::Origin& origin);

// `text` (a file path, say) made a valid origin source: control characters
// and invalid UTF-8 become '?', and a long one keeps its end.
std::string OriginSource(absl::string_view text);

}  // namespace zerocopy
