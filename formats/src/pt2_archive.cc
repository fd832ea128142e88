#include "zerocopy/pt2_archive.h"

#include <map>
#include <memory>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "zerocopy/dtype.h"
#include "zerocopy/manifest.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/status.h"
#include "zerocopy/torch_save_file.h"
#include "json_nesting.h"

namespace zerocopy {

namespace {

using json = nlohmann::json;

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

constexpr int kMaxNesting = 16;
constexpr size_t kMaxEntries = 1u << 20;  // tensors in a config: models have thousands
constexpr size_t kMaxRank = 64;
constexpr uint64_t kMaxConfigBytes = 64ull << 20;  // a config entry per tensor: a few MiB for the largest models

// torch/_export/serde/schema.py ScalarType -> ours (the ones we hold).
std::optional<v1::DType> DTypeOfScalarType(int64_t code) {
  switch (code) {
    case 1: return v1::U8;        // BYTE
    case 2: return v1::I8;        // CHAR
    case 3: return v1::I16;       // SHORT
    case 4: return v1::I32;       // INT
    case 5: return v1::I64;       // LONG
    case 6: return v1::F16;       // HALF
    case 7: return v1::F32;       // FLOAT
    case 8: return v1::F64;       // DOUBLE
    case 10: return v1::C64;      // COMPLEXFLOAT
    case 11: return v1::C128;     // COMPLEXDOUBLE
    case 12: return v1::BOOL;     // BOOL
    case 13: return v1::BF16;     // BFLOAT16
    case 28: return v1::U16;      // UINT16
    case 29: return v1::F8_E4M3;  // FLOAT8E4M3FN
    case 30: return v1::F8_E5M2;  // FLOAT8E5M2
    case 34: return v1::U32;      // UINT32
    case 35: return v1::U64;      // UINT64
    default: return std::nullopt;
  }
}
constexpr int64_t kStridedLayout = 7;

// The archive's entries by their path under the top directory.
class Entries {
 public:
  static absl::StatusOr<Entries> Of(const uint8_t* base, const std::vector<ZipEntry>& entries) {
    Entries out;
    out.base_ = base;
    for (const auto& e : entries) {
      const size_t slash = e.name.find('/');
      if (slash == std::string::npos || slash == 0) {
        return Invalid(absl::StrCat("entry '", e.name, "' is not under the archive's top directory"));
      }
      if (out.top_.empty()) out.top_ = e.name.substr(0, slash);
      if (e.name.compare(0, slash, out.top_) != 0) {
        return Invalid(absl::StrCat("entries under two top directories ('", out.top_, "/' and '",
                                    e.name.substr(0, slash + 1), "')"));
      }
      std::string rest = e.name.substr(slash + 1);
      if (rest.empty() || rest.back() == '/') continue;  // a directory entry
      if (e.method != 0) {
        return Invalid(absl::StrCat("entry '", e.name, "' is compressed; torch.export.save stores every entry"));
      }
      if (!out.by_path_.emplace(std::move(rest), &e).second) return Invalid(absl::StrCat("entry '", e.name, "' twice"));
    }
    return out;
  }

  const ZipEntry* Find(const std::string& path) const {
    auto it = by_path_.find(path);
    return it == by_path_.end() ? nullptr : it->second;
  }
  absl::string_view Bytes(const ZipEntry& e) const {
    return absl::string_view(reinterpret_cast<const char*>(base_ + e.data_offset), e.size);
  }
  const uint8_t* Data(const ZipEntry& e) const { return base_ + e.data_offset; }
  const std::map<std::string, const ZipEntry*>& all() const { return by_path_; }

 private:
  const uint8_t* base_ = nullptr;
  std::string top_;
  std::map<std::string, const ZipEntry*> by_path_;
};

// A JSON object of the archive (a config), within the size and nesting
// budgets.
absl::StatusOr<json> ParseObject(const Entries& entries, const ZipEntry& e, const std::string& path) {
  if (e.size > kMaxConfigBytes) {
    return Invalid(absl::StrCat(path, " is ", e.size, " bytes; the limit is ", kMaxConfigBytes));
  }
  absl::string_view text = entries.Bytes(e);
  if (!internal::JsonNestingWithin(text, kMaxNesting)) return Invalid(absl::StrCat(path, " is nested too deeply"));
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Invalid(absl::StrCat(path, " is not valid JSON"));
  if (!doc.is_object()) return Invalid(absl::StrCat(path, " is not a JSON object"));
  return doc;
}

// At most kMaxEntries tensors in a config.
absl::Status WithinEntries(const json& config, const std::string& path) {
  if (config.size() > kMaxEntries) return Invalid(absl::StrCat(path, " has over ", kMaxEntries, " entries"));
  return absl::OkStatus();
}

// The "config" object of a torch.export payload config.
absl::StatusOr<json> ParseConfig(const Entries& entries, const ZipEntry& e, const std::string& path) {
  ZC_ASSIGN_OR_RETURN(json doc, ParseObject(entries, e, path));
  auto config = doc.find("config");
  if (config == doc.end() || !config->is_object()) return Invalid(absl::StrCat(path, " has no \"config\" object"));
  ZC_RETURN_IF_ERROR(WithinEntries(*config, path));
  return std::move(*config);
}

// {"as_int": n} (sizes, strides, offsets); symbolic values are refused.
absl::StatusOr<int64_t> AsInt(const json& v, const std::string& what) {
  auto it = v.is_object() ? v.find("as_int") : v.end();
  if (it == v.end() || !it->is_number_integer()) {
    return Invalid(absl::StrCat(what, " is not a plain integer (a symbolic size?): ", v.dump()));
  }
  return it->get<int64_t>();
}

absl::StatusOr<std::vector<int64_t>> AsInts(const json& meta, const char* key, const std::string& tensor) {
  auto it = meta.find(key);
  if (it == meta.end() || !it->is_array()) return Invalid(absl::StrCat("tensor '", tensor, "' has no ", key));
  if (it->size() > kMaxRank) return Invalid(absl::StrCat("tensor '", tensor, "' has over ", kMaxRank, " dimensions"));
  std::vector<int64_t> out;
  for (const auto& v : *it) {
    ZC_ASSIGN_OR_RETURN(int64_t n, AsInt(v, absl::StrCat("tensor '", tensor, "': a value of ", key)));
    out.push_back(n);
  }
  return out;
}

// Adds the tensors of one payload config (weights or constants) whose
// records lie in `dir`, each record a storage (shared by the tensors that
// name it).
class PayloadReader {
 public:
  PayloadReader(const Entries& entries, Checkpoint& out) : entries_(entries), out_(out) {}

  absl::Status Add(const std::string& config_path, const std::string& dir, const char* record_prefix,
                   const char* kind) {
    const ZipEntry* e = entries_.Find(config_path);
    if (e == nullptr) return absl::OkStatus();  // a program without weights (or constants)
    ZC_ASSIGN_OR_RETURN(json config, ParseConfig(entries_, *e, config_path));
    for (auto it = config.begin(); it != config.end(); ++it) {
      const std::string& fqn = it.key();
      const json& p = it.value();
      if (!p.is_object()) return Invalid(absl::StrCat(config_path, ": entry '", fqn, "' is not an object"));
      auto path_name = p.find("path_name");
      if (path_name == p.end() || !path_name->is_string()) {
        return Invalid(absl::StrCat(kind, " '", fqn, "' has no path_name"));
      }
      const std::string record = path_name->get<std::string>();
      if (!absl::StartsWith(record, record_prefix)) {
        return Invalid(absl::StrCat(kind, " '", fqn, "' is a ", record.substr(0, record.find('_') + 1),
                                    " object (a script object or opaque constant), which zerocopy does not hold"));
      }
      if (p.value("use_pickle", false)) {
        return Invalid(absl::StrCat(kind, " '", fqn,
                                    "' is stored as a pickle (a tensor subclass), which zerocopy "
                                    "does not hold; plain tensors only"));
      }
      auto meta = p.find("tensor_meta");
      if (meta == p.end() || !meta->is_object()) return Invalid(absl::StrCat(kind, " '", fqn, "' has no tensor_meta"));
      ZC_RETURN_IF_ERROR(AddTensor(fqn, *meta, dir + record, kind));
    }
    return absl::OkStatus();
  }

  // An AOTInductor package's weights (aoti_compile_and_package with
  // package_constants_in_so off and the "pickle_weights" disk format):
  // `config_path` maps each fqn to [record, sizes, strides, offset], the
  // record under data/weights/ a torch.save of one tensor whose storage
  // holds the weight (read by TorchSaveFile, in place).
  absl::Status AddAotiWeights(const std::string& config_path) {
    const ZipEntry* e = entries_.Find(config_path);
    if (e == nullptr) return absl::OkStatus();
    ZC_ASSIGN_OR_RETURN(json config, ParseObject(entries_, *e, config_path));
    ZC_RETURN_IF_ERROR(WithinEntries(config, config_path));
    for (auto it = config.begin(); it != config.end(); ++it) {
      const std::string& fqn = it.key();
      const json& w = it.value();
      if (!w.is_array() || w.size() != 4 || !w[0].is_string() || !w[1].is_array() || !w[2].is_array() ||
          !w[3].is_number_integer()) {
        return Invalid(absl::StrCat(config_path, ": weight '", fqn, "' is not [record, sizes, strides, offset]"));
      }
      if (!names_.insert(fqn).second) return Invalid(absl::StrCat(config_path, ": weight '", fqn, "' twice"));
      if (w[1].size() > kMaxRank || w[2].size() > kMaxRank) {
        return Invalid(absl::StrCat("weight '", fqn, "' has over ", kMaxRank, " dimensions"));
      }
      std::vector<int64_t> sizes, strides;
      for (const auto* list : {&w[1], &w[2]}) {
        auto& out = list == &w[1] ? sizes : strides;
        for (const auto& v : *list) {
          if (!v.is_number_integer())
            return Invalid(absl::StrCat("weight '", fqn, "' has a size or stride ", v.dump()));
          out.push_back(v.get<int64_t>());
        }
      }
      const std::string record = absl::StrCat("data/weights/", w[0].get<std::string>());
      ZC_ASSIGN_OR_RETURN(auto held, SavedTensor(record, fqn));
      ZC_RETURN_IF_ERROR(Place(fqn, "weight", held.second, sizes, strides, w[3].get<int64_t>(), held.first, record));
    }
    return absl::OkStatus();
  }

  const std::set<std::string>& used() const { return used_; }

 private:
  absl::Status AddTensor(const std::string& fqn, const json& meta, const std::string& record, const char* kind) {
    if (!names_.insert(fqn).second) {
      return Invalid(absl::StrCat("'", fqn, "' names both a weight and a constant"));
    }
    if (meta.value("layout", kStridedLayout) != kStridedLayout) {
      return Invalid(absl::StrCat(kind, " '", fqn, "' is not a strided (dense) tensor"));
    }
    const auto code = meta.find("dtype");
    std::optional<v1::DType> dtype;
    if (code != meta.end() && code->is_number_integer()) dtype = DTypeOfScalarType(code->get<int64_t>());
    if (!dtype) {
      return Invalid(absl::StrCat(kind, " '", fqn, "' has dtype ", code == meta.end() ? "none" : code->dump(),
                                  ", which zerocopy does not hold"));
    }
    ZC_ASSIGN_OR_RETURN(std::vector<int64_t> sizes, AsInts(meta, "sizes", fqn));
    ZC_ASSIGN_OR_RETURN(std::vector<int64_t> strides, AsInts(meta, "strides", fqn));
    auto offset_it = meta.find("storage_offset");
    int64_t offset = 0;
    if (offset_it != meta.end()) {
      ZC_ASSIGN_OR_RETURN(offset, AsInt(*offset_it, absl::StrCat("tensor '", fqn, "' offset")));
    }
    ZC_ASSIGN_OR_RETURN(uint32_t storage, Storage(record, *dtype, fqn));
    return Place(fqn, kind, *dtype, sizes, strides, offset, storage, record);
  }

  // Tensor `fqn` over storage `storage` (of `record`): `offset` in elements.
  absl::Status Place(const std::string& fqn, const char* kind, v1::DType dtype, const std::vector<int64_t>& sizes,
                     const std::vector<int64_t>& strides, int64_t offset, uint32_t storage, const std::string& record) {
    if (offset < 0 || offset > (int64_t{1} << 48)) {
      return Invalid(absl::StrCat(kind, " '", fqn, "' has storage offset ", offset));
    }
    auto* t = out_.source.manifest.add_tensors();
    t->set_name(fqn);
    t->set_storage(storage);
    t->set_dtype(dtype);
    t->set_byte_offset(static_cast<uint64_t>(offset) * DTypeSize(dtype));
    for (int64_t d : sizes) t->add_shape(d);
    for (int64_t s : strides) t->add_strides(s);
    // The tensor lies inside its record (ValidateManifest checks it again
    // with the whole manifest; here the error names the archive's tensor).
    if (sizes.size() != strides.size()) {
      return Invalid(absl::StrCat(kind, " '", fqn, "' has ", sizes.size(), " sizes and ", strides.size(), " strides"));
    }
    auto extent = TensorExtent(*t);
    if (!extent.ok()) return Annotate(extent.status(), absl::StrCat(kind, " '", fqn, "'"));
    const uint64_t size = out_.source.manifest.storages(static_cast<int>(storage)).size();
    if (t->byte_offset() > size || *extent > size - t->byte_offset()) {
      return Invalid(
          absl::StrCat(kind, " '", fqn, "' reaches past the end of its record ", record, " (", size, " bytes)"));
    }
    return absl::OkStatus();
  }

  // Storage of `record`, a raw record of `dtype` elements (added once).
  absl::StatusOr<uint32_t> Storage(const std::string& record, v1::DType dtype, const std::string& fqn) {
    auto it = storages_.find(record);
    if (it != storages_.end()) return it->second;
    const ZipEntry* e = entries_.Find(record);
    if (e == nullptr) return Invalid(absl::StrCat("tensor '", fqn, "' names record ", record, ", which is missing"));
    if (e->size % DTypeSize(dtype) != 0) {
      return Invalid(absl::StrCat("record ", record, " of tensor '", fqn, "' holds ", e->size,
                                  " bytes, not a whole number of ", DTypeName(dtype)));
    }
    used_.insert(record);
    out_.source.manifest.add_storages()->set_size(e->size);
    out_.source.storage_data.push_back(entries_.Data(*e));
    const auto index = static_cast<uint32_t>(out_.source.manifest.storages_size() - 1);
    storages_.emplace(record, index);
    return index;
  }

  // The storage and dtype of the one tensor a torch.save record holds.
  absl::StatusOr<std::pair<uint32_t, v1::DType>> SavedTensor(const std::string& record, const std::string& fqn) {
    auto it = saved_.find(record);
    if (it != saved_.end()) return it->second;
    const ZipEntry* e = entries_.Find(record);
    if (e == nullptr) return Invalid(absl::StrCat("weight '", fqn, "' names record ", record, ", which is missing"));
    auto file = TorchSaveFile::ParseTensor(entries_.Data(*e), e->size);
    if (!file.ok()) return Annotate(file.status(), absl::StrCat("record ", record, " of weight '", fqn, "'"));
    const ModelSource& inner = file->source();
    const v1::Tensor& t = inner.manifest.tensors(0);
    used_.insert(record);
    out_.source.manifest.add_storages()->set_size(inner.manifest.storages(static_cast<int>(t.storage())).size());
    out_.source.storage_data.push_back(inner.storage_data[t.storage()]);  // inside the record: our bytes
    const auto index = static_cast<uint32_t>(out_.source.manifest.storages_size() - 1);
    return saved_[record] = {index, t.dtype()};
  }

  const Entries& entries_;
  Checkpoint& out_;
  std::map<std::string, std::pair<uint32_t, v1::DType>> saved_;
  std::set<std::string> names_;
  std::map<std::string, uint32_t> storages_;
  std::set<std::string> used_;
};

}  // namespace

bool IsPt2Archive(const std::vector<ZipEntry>& entries) {
  for (const auto& e : entries) {
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash + 1, std::string::npos, "archive_format") == 0) return true;
  }
  return false;
}

absl::StatusOr<Checkpoint> ParsePt2Archive(const uint8_t* data, size_t size) {
  ZC_ASSIGN_OR_RETURN(std::vector<ZipEntry> zip, ReadZipDirectory(data, size));
  ZC_ASSIGN_OR_RETURN(Entries entries, Entries::Of(data, zip));
  auto marker = [&](const std::string& path) -> std::optional<absl::string_view> {
    const ZipEntry* e = entries.Find(path);
    if (e == nullptr) return std::nullopt;
    return entries.Bytes(*e);
  };
  auto format = marker("archive_format");
  if (!format || *format != "pt2") return Invalid("not a pt2 archive (no archive_format entry saying pt2)");
  auto version = marker("archive_version");
  if (!version || *version != "0") {
    return Invalid(absl::StrCat("pt2 archive version ", version ? std::string(*version) : "none",
                                "; zerocopy reads version 0 (torch.export.save of torch 2.x)"));
  }
  auto order = marker("byteorder");
  if (order && *order != "little") return Invalid(absl::StrCat("pt2 archive of byte order ", *order, "; only little"));

  std::set<std::string> programs, compiled;  // models/<m>.json; data/aotinductor/<m>/...
  constexpr absl::string_view kCompiledDir = "data/aotinductor/";
  for (const auto& [path, e] : entries.all()) {
    if (absl::StartsWith(path, "models/") && absl::EndsWith(path, ".json") && path.find('/', 7) == std::string::npos) {
      programs.insert(path.substr(7, path.size() - 12));
    }
    const size_t slash = path.find('/', kCompiledDir.size());
    if (absl::StartsWith(path, kCompiledDir) && slash != std::string::npos) {
      compiled.insert(path.substr(kCompiledDir.size(), slash - kCompiledDir.size()));
    }
  }
  const std::set<std::string>& models = compiled.empty() ? programs : compiled;
  const char* what = compiled.empty() ? "programs" : "compiled models";
  if (models.empty()) return Invalid("pt2 archive without a program (no models/<name>.json)");
  if (models.size() > 1) {
    return Invalid(absl::StrCat("pt2 archive with ", models.size(), " ", what, " (", *models.begin(), ", ",
                                *std::next(models.begin()),
                                ", ...); zerocopy takes archives of one, as "
                                "torch.export.save and aoti_compile_and_package write"));
  }
  const std::string& model = *models.begin();

  Checkpoint out;
  PayloadReader reader(entries, out);
  if (!compiled.empty()) {
    // An AOTInductor package: its weights beside the compiled library, or
    // inside it (torch's default), where no other process can share them.
    const std::string config = absl::StrCat(kCompiledDir, model, "/weights_config.json");
    if (entries.Find(config) == nullptr) {
      return Invalid(
          "an AOTInductor package whose weights are inside its compiled library (torch's default): "
          "compile it with inductor_configs={\"aot_inductor.package_constants_in_so\": False, "
          "\"aot_inductor.package_constants_on_disk_format\": \"pickle_weights\"} so that zerocopy "
          "can share them");
    }
    out.source.manifest.set_format(kAotInductorFormat);
    ZC_RETURN_IF_ERROR(reader.AddAotiWeights(config));
  } else {
    if (entries.Find(absl::StrCat("data/weights/", model, ".pt")) != nullptr) {
      return Invalid(
          "a pt2 archive of the legacy layout (its weights one torch.save file, data/weights/<name>.pt): load it "
          "with torch.export.load and save it again with torch.export.save");
    }
    out.source.manifest.set_format(kTorchExportFormat);
    ZC_RETURN_IF_ERROR(
        reader.Add(absl::StrCat("data/weights/", model, "_weights_config.json"), "data/weights/", "weight_", "weight"));
    ZC_RETURN_IF_ERROR(reader.Add(absl::StrCat("data/constants/", model, "_constants_config.json"), "data/constants/",
                                  "tensor_", "constant"));
  }
  // Everything else is the program's: kept as files.
  uint64_t file_bytes = 0;
  for (const auto& [path, e] : entries.all()) {
    if (reader.used().count(path)) continue;
    ZC_RETURN_IF_ERROR(Annotate(ValidateFileName(path), "pt2 archive entry"));
    file_bytes += e->size;
    if (file_bytes > kMaxProgramFileBytes) {
      return Invalid(absl::StrCat("the program's entries (all but the weights and constants) take over ",
                                  kMaxProgramFileBytes, " bytes"));
    }
    out.source.manifest.add_storages()->set_size(e->size);
    out.source.storage_data.push_back(entries.Data(*e));
    auto* file = out.source.manifest.add_files();
    file->set_name(path);
    file->set_storage(static_cast<uint32_t>(out.source.manifest.storages_size() - 1));
  }
  return out;
}

absl::StatusOr<Checkpoint> ReadPt2Archive(const std::string& path) {
  ZC_ASSIGN_OR_RETURN(MappedRegion region, MappedRegion::MapFile(path));
  auto shared = std::make_shared<MappedRegion>(std::move(region));
  auto checkpoint = ParsePt2Archive(shared->data(), shared->size());
  if (!checkpoint.ok()) return Annotate(checkpoint.status(), path);
  checkpoint->owners.push_back(std::move(shared));
  return checkpoint;
}

}  // namespace zerocopy
