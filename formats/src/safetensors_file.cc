#include "zerocopy/safetensors_file.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

#include "json_nesting.h"
#include "mapped_file.h"

namespace zerocopy {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeader = 100ull << 20;  // what the reference implementation allows
constexpr int kMaxDepth = 16;

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what)); }

}  // namespace

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::shared_ptr<MappedRegion> region;
  ZC_ASSIGN_OR_RETURN(SafetensorsFile file, ParseMappedFile(path, &SafetensorsFile::Parse, &region));
  file.region_ = std::move(region);
  return file;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(const uint8_t* data, size_t size) {
  if (size < 8) return Invalid(absl::StrCat("file of ", size, " bytes is shorter than the 8-byte header length"));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxHeader) {
    return Invalid(absl::StrCat("header length ", header_len, " exceeds the limit of ", kMaxHeader));
  }
  if (header_len > size - 8) {
    return Invalid(absl::StrCat("header length ", header_len, " runs past the end of the ", size, "-byte file"));
  }
  absl::string_view text(reinterpret_cast<const char*>(data + 8), header_len);
  if (!internal::JsonNestingWithin(text, kMaxDepth)) return Invalid("header JSON is nested too deeply");
  json header = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return Invalid("header is not valid JSON");
  if (!header.is_object()) return Invalid("header is not a JSON object");

  SafetensorsFile file;
  const uint8_t* base = data + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  file.data_bytes_ = data_size;
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Invalid("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return Invalid(absl::StrCat("__metadata__ value '", m.key(), "' is not a string"));
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) return Invalid(absl::StrCat("tensor '", name, "' is not an object"));
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return Invalid(absl::StrCat("tensor '", name, "' has no dtype string"));
    if (sh == v.end() || !sh->is_array()) return Invalid(absl::StrCat("tensor '", name, "' has no shape array"));
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return Invalid(absl::StrCat("tensor '", name, "' needs data_offsets [begin, end] of non-negative integers"));
    }
    auto dtype = DTypeFromSafetensors(dt->get<std::string>());
    if (!dtype) return Invalid(absl::StrCat("tensor '", name, "' has unsupported dtype ", dt->get<std::string>()));
    Entry entry;
    entry.name = name;
    entry.dtype = *dtype;
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned())
        return Invalid(absl::StrCat("tensor '", name, "' has a negative or non-integer dimension"));
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel)) {
        return Invalid(absl::StrCat("tensor '", name, "': element count overflows"));
      }
      entry.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t begin = (*off)[0].get<uint64_t>();
    uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Invalid(absl::StrCat("tensor '", name, "' data_offsets [", begin, ", ", end,
                                  "] lie outside the data region of ", data_size, " bytes"));
    }
    uint64_t expected;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(*dtype)), &expected) || expected != end - begin) {
      return Invalid(absl::StrCat("tensor '", name, "' has ", end - begin, " bytes but its shape and dtype need ",
                                  numel, " x ", DTypeSize(*dtype)));
    }
    entry.data = base + begin;
    entry.size = end - begin;
    file.tensors_.push_back(std::move(entry));
    spans.push_back(Span{begin, end, nullptr});
  }
  for (size_t i = 0; i < spans.size(); ++i) spans[i].name = &file.tensors_[i].name;
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      return Invalid(absl::StrCat("tensors '", *spans[i - 1].name, "' and '", *spans[i].name, "' overlap"));
    }
  }
  return file;
}

ModelSource SafetensorsFile::ToModelSource() const {
  ModelSource source;
  source.manifest.set_format("safetensors");
  if (!metadata_.empty()) source.manifest.set_metadata(json(metadata_).dump());
  for (const auto& entry : tensors_) {
    auto* storage = source.manifest.add_storages();
    storage->set_size(entry.size);
    auto* tensor = source.manifest.add_tensors();
    tensor->set_name(entry.name);
    tensor->set_storage(static_cast<uint32_t>(source.manifest.storages_size() - 1));
    tensor->set_dtype(entry.dtype);
    for (int64_t d : entry.shape) tensor->add_shape(d);
    source.storage_data.push_back(entry.data);
  }
  return source;
}

}  // namespace zerocopy
