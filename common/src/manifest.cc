#include "zerocopy/manifest.h"

#include <algorithm>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/strings/escaping.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "zerocopy/dtype.h"
#include "zerocopy/status.h"

namespace zerocopy {

namespace {

// Names travel in protobuf string fields, which must be UTF-8.
bool IsUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0xff >> (n + 1));
    for (size_t k = 1; k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 0x2) return false;
      cp = cp << 6 | (cc & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

bool AddOverflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }
bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

uint64_t AlignUp(uint64_t v) { return (v + kStorageAlignment - 1) & ~(kStorageAlignment - 1); }

}  // namespace

absl::StatusOr<uint64_t> TensorExtent(const v1::Tensor& tensor) {
  const size_t item = DTypeSize(tensor.dtype());
  if (item == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor.name(), "': unknown dtype ", static_cast<int>(tensor.dtype())));
  }
  const int rank = tensor.shape_size();
  if (tensor.strides_size() != 0 && tensor.strides_size() != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor.name(), "': ", tensor.strides_size(), " strides for rank ", rank));
  }
  for (int i = 0; i < tensor.strides_size(); ++i) {
    if (tensor.strides(i) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name(), "': negative stride ", tensor.strides(i)));
    }
  }
  for (int i = 0; i < rank; ++i) {
    if (tensor.shape(i) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor.name(), "': negative dimension ", tensor.shape(i)));
    }
    if (tensor.shape(i) == 0) return 0;  // empty: spans nothing
  }
  // Extent in elements: 1 + sum((shape[i]-1) * stride[i]).
  uint64_t last = 0;
  uint64_t contiguous_stride = 1;
  for (int i = rank - 1; i >= 0; --i) {
    uint64_t dim = static_cast<uint64_t>(tensor.shape(i));
    uint64_t stride = contiguous_stride;
    if (tensor.strides_size() != 0) {
      if (tensor.strides(i) < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", tensor.name(), "': negative stride ", tensor.strides(i)));
      }
      stride = static_cast<uint64_t>(tensor.strides(i));
    }
    uint64_t term;
    if (MulOverflows(dim - 1, stride, &term) || AddOverflows(last, term, &last) ||
        MulOverflows(contiguous_stride, dim, &contiguous_stride)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name(), "': size overflows"));
    }
  }
  uint64_t bytes;
  if (AddOverflows(last, 1, &bytes) || MulOverflows(bytes, item, &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name(), "': size overflows"));
  }
  return bytes;
}

bool IsContiguous(const v1::Tensor& tensor) {
  if (tensor.strides_size() == 0) return true;
  int64_t expected = 1;
  for (int i = tensor.shape_size() - 1; i >= 0; --i) {
    if (tensor.shape(i) != 1 && tensor.strides(i) != expected) return false;
    expected *= tensor.shape(i);
  }
  return true;
}

bool CoversStorage(const v1::Tensor& tensor, const v1::Storage& storage) {
  if (tensor.byte_offset() != 0 || !IsContiguous(tensor)) return false;
  auto extent = TensorExtent(tensor);
  return extent.ok() && *extent == storage.size();
}

// The files part of ValidateManifest (the tensors are checked first).
static absl::Status ValidateFiles(const Manifest& manifest, const ManifestLimits& limits) {
  if (manifest.files().empty()) return absl::OkStatus();
  if (static_cast<uint64_t>(manifest.files_size()) > limits.max_files) {
    return absl::InvalidArgumentError(
        absl::StrCat("manifest has ", manifest.files_size(), " files; the limit is ", limits.max_files));
  }
  // Which storages tensors view, and which a file already holds.
  std::vector<bool> used(manifest.storages_size(), false);
  for (const auto& tensor : manifest.tensors()) used[tensor.storage()] = true;
  absl::flat_hash_set<absl::string_view> names;
  uint64_t total = 0;
  for (const auto& file : manifest.files()) {
    ZC_RETURN_IF_ERROR(ValidateFileName(file.name()));
    if (!names.insert(file.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("file '", file.name(), "' appears twice"));
    }
    if (file.storage() >= static_cast<uint32_t>(manifest.storages_size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("file '", file.name(), "' names storage ", file.storage(), " of ", manifest.storages_size()));
    }
    if (used[file.storage()]) {
      return absl::InvalidArgumentError(absl::StrCat("file '", file.name(), "' names storage ", file.storage(),
                                                     ", which a tensor or another file uses"));
    }
    used[file.storage()] = true;
    total += manifest.storages(file.storage()).size();  // each at most the model's size: no overflow
    if (total > limits.max_file_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("the model's files take over ", limits.max_file_bytes, " bytes; that is the limit"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateManifest(const Manifest& manifest, const ManifestLimits& limits) {
  if (static_cast<uint64_t>(manifest.storages_size()) > limits.max_storages) {
    return absl::InvalidArgumentError(
        absl::StrCat("manifest has ", manifest.storages_size(), " storages; the limit is ", limits.max_storages));
  }
  if (static_cast<uint64_t>(manifest.tensors_size()) > limits.max_tensors) {
    return absl::InvalidArgumentError(
        absl::StrCat("manifest has ", manifest.tensors_size(), " tensors; the limit is ", limits.max_tensors));
  }
  if (manifest.metadata().size() > limits.max_metadata) {
    return absl::InvalidArgumentError(absl::StrCat("manifest metadata is ", manifest.metadata().size(),
                                                   " bytes; the limit is ", limits.max_metadata));
  }
  uint64_t total = 0;
  for (int s = 0; s < manifest.storages_size(); ++s) {
    uint64_t size = manifest.storages(s).size();
    if (size > limits.max_total_size || AddOverflows(AlignUp(total), size, &total) || total > limits.max_total_size) {
      return absl::InvalidArgumentError(absl::StrCat("storage ", s, " of ", size,
                                                     " bytes makes the model larger than the limit of ",
                                                     limits.max_total_size, " bytes"));
    }
  }
  absl::flat_hash_set<absl::string_view> names;  // views into the manifest, which outlives the set
  names.reserve(manifest.tensors_size());
  for (const auto& tensor : manifest.tensors()) {
    const std::string& name = tensor.name();
    if (name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
    if (name.size() > limits.max_tensor_name) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name of ", name.size(), " characters; the limit is ", limits.max_tensor_name));
    }
    if (name.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError("a tensor name contains a NUL character");
    }
    if (!IsUtf8(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name \"", absl::CHexEscape(name), "\" is not valid UTF-8"));
    }
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor name '", name, "' appears twice"));
    }
    if (static_cast<uint64_t>(tensor.shape_size()) > limits.max_rank) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has rank ", tensor.shape_size(), "; the limit is ", limits.max_rank));
    }
    if (tensor.storage() >= static_cast<uint32_t>(manifest.storages_size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' names storage ", tensor.storage(), " of ", manifest.storages_size()));
    }
    auto extent = TensorExtent(tensor);
    if (!extent.ok()) return extent.status();
    const size_t item = DTypeSize(tensor.dtype());
    if (tensor.byte_offset() % item != 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': byte offset ", tensor.byte_offset(),
                                                     " is not a multiple of its element size ", item));
    }
    uint64_t end;
    const uint64_t storage_size = manifest.storages(tensor.storage()).size();
    if (AddOverflows(tensor.byte_offset(), *extent, &end) || end > storage_size) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' spans bytes [", tensor.byte_offset(), ", ",
                                                     tensor.byte_offset(), "+", *extent, ") outside its storage of ",
                                                     storage_size, " bytes"));
    }
  }
  return ValidateFiles(manifest, limits);
}

absl::Status AssignOffsets(Manifest* manifest, const ManifestLimits& limits) {
  uint64_t offset = 0;
  for (auto& storage : *manifest->mutable_storages()) {
    offset = AlignUp(offset);
    storage.set_offset(offset);
    if (AddOverflows(offset, storage.size(), &offset) || offset > limits.max_total_size) {
      return absl::InvalidArgumentError("model size overflows");
    }
  }
  manifest->set_total_size(AlignUp(offset));
  return absl::OkStatus();
}

absl::Status CheckLayout(const Manifest& manifest) {
  Manifest expected = manifest;
  ZC_RETURN_IF_ERROR(AssignOffsets(&expected));
  for (int s = 0; s < manifest.storages_size(); ++s) {
    if (manifest.storages(s).offset() != expected.storages(s).offset()) {
      return absl::InvalidArgumentError(absl::StrCat("storage ", s, " is at offset ", manifest.storages(s).offset(),
                                                     "; the layout puts it at ", expected.storages(s).offset()));
    }
  }
  if (manifest.total_size() != expected.total_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("total size ", manifest.total_size(), " does not match the layout's ", expected.total_size()));
  }
  return absl::OkStatus();
}

absl::Status ValidateFileName(absl::string_view name) {
  if (name.empty() || name.size() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("file name of ", name.size(), " bytes: it must have 1 to 1024"));
  }
  if (!IsUtf8(name)) {
    return absl::InvalidArgumentError(absl::StrCat("file name \"", absl::CHexEscape(name), "\" is not valid UTF-8"));
  }
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("file name \"", absl::CHexEscape(name), "\" contains a control character"));
    }
  }
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty() || part == "." || part == ".." || part.size() > 255) {
      return absl::InvalidArgumentError(
          absl::StrCat("file name '", name, "' is not a relative path of parts of 1 to 255 bytes, none '.' or '..'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateModelName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("model name is empty");
  if (name.size() > 255) {
    return absl::InvalidArgumentError(absl::StrCat("model name is ", name.size(), " characters; the limit is 255"));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-' || c == ':' || c == '@' || c == '+' || c == '=';
    if (!ok) {
      std::string shown = (c >= 0x20 && c < 0x7f)
                              ? std::string(1, c)
                              : absl::StrCat("\\x", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
      return absl::InvalidArgumentError(
          absl::StrCat("model name contains '", shown, "': use letters, digits and . _ - : @ + ="));
    }
  }
  if (name[0] == '.' || name[0] == '-' || name[0] == ':') {
    return absl::InvalidArgumentError("model name must not start with '.', '-' or ':'");
  }
  if (IsDigest(name)) {
    return absl::InvalidArgumentError("model name must not be 32 hex digits: those name digests");
  }
  return absl::OkStatus();
}

absl::Status ValidateOrigin(const v1::Origin& origin) {
  auto text = [](absl::string_view value) {
    return IsUtf8(value) && std::none_of(value.begin(), value.end(),
                                         [](char c) { return (static_cast<unsigned char>(c) < 0x20) || c == 0x7f; });
  };
  if (origin.kind().size() > 32 || !text(origin.kind())) {
    return absl::InvalidArgumentError("origin kind must be at most 32 bytes of UTF-8 text without control characters");
  }
  if (origin.source().size() > kMaxOriginSource || !text(origin.source())) {
    return absl::InvalidArgumentError(absl::StrCat("origin source must be at most ", kMaxOriginSource,
                                                   " bytes of UTF-8 text without control characters"));
  }
  if (origin.duration_ms() < 0) return absl::InvalidArgumentError("origin duration_ms is negative");
  return absl::OkStatus();
}

std::string OriginSource(absl::string_view text) {
  std::string out;
  for (unsigned char c : text) out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  if (!IsUtf8(out)) {
    for (auto& c : out) {
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
    }
  }
  if (out.size() > kMaxOriginSource) out = "..." + out.substr(out.size() - (kMaxOriginSource - 3));
  return out;
}

bool IsDigest(absl::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace zerocopy
