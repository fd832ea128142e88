#include "zerocopy/torch_save_file.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cctype>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "zerocopy/dtype.h"
#include "zerocopy/manifest.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"
#include "zerocopy/zip_directory.h"

#include "legacy_torch_save.h"
#include "mapped_file.h"
#include "restricted_unpickler.h"

namespace zerocopy {

namespace {

using json = nlohmann::json;

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

using pickle::Kind;
using pickle::KindName;
using pickle::kMaxDepth;
using pickle::Obj;

// Budget against hostile archives (real state dicts stay far below): the
// objects flattening may visit (shared sub-objects are visited once per
// reference, so a small pickle can describe an exponential tree).
constexpr uint64_t kMaxVisits = 1u << 20;

// The storages of a zip archive: stored records <archive>/data/<key>.
class ZipStorages : public pickle::StorageSource {
 public:
  ZipStorages(const uint8_t* base, std::string prefix, const std::vector<ZipEntry>& entries)
      : base_(base), prefix_(std::move(prefix)), entries_(entries) {}

  bool legacy() const override { return false; }

  absl::Status Find(Obj* storage) override {
    const std::string want = absl::StrCat(prefix_, "data/", storage->s);
    for (const auto& e : entries_) {
      if (e.name != want) continue;
      if (e.method != 0) return Invalid(absl::StrCat("storage ", want, " is compressed; torch.save never does that"));
      if (storage->bytes > e.size) {
        return Invalid(absl::StrCat("storage ", storage->s, " declares ", storage->bytes / DTypeSize(storage->dtype),
                                    " elements of ", DTypeName(storage->dtype), " but its entry holds ", e.size,
                                    " bytes"));
      }
      storage->data = base_ + e.data_offset;
      return absl::OkStatus();
    }
    return Invalid(absl::StrCat("storage ", want, " is missing from the archive"));
  }

 private:
  const uint8_t* base_;
  std::string prefix_;
  const std::vector<ZipEntry>& entries_;
};

class Flattener {
 public:
  explicit Flattener(ModelSource& out) : out_(out) {}

  absl::Status Flatten(const Obj* o, const std::string& name, int depth) {
    if (depth > kMaxDepth) return Invalid(absl::StrCat("entry '", name, "' is nested deeper than ", kMaxDepth));
    if (!Spend()) return OverBudget();
    if (o->kind == Kind::kTensor) return AddTensor(o, name);
    if (!HoldsTensor(o, depth)) {
      if (visits_ > kMaxVisits) return OverBudget();
      auto j = ToJson(o, depth);
      if (visits_ > kMaxVisits) return OverBudget();
      if (!j) {
        return Invalid(absl::StrCat("entry '", name, "' holds a ", KindName(o->kind),
                                    " that is not plain data (numbers, strings, lists, dicts with string keys)"));
      }
      if (name.empty()) return Invalid("the file holds no tensors");
      metadata_[name] = std::move(*j);
      return absl::OkStatus();
    }
    auto child = [&](const std::string& key) { return name.empty() ? key : absl::StrCat(name, ".", key); };
    if (o->kind == Kind::kDict) {
      for (const auto& [k, v] : o->dict) {
        std::string key;
        if (k->kind == Kind::kString)
          key = k->s;
        else if (k->kind == Kind::kInt)
          key = std::to_string(k->i);
        else
          return Invalid(absl::StrCat("entry '", name, "' has a ", KindName(k->kind), " key"));
        ZC_RETURN_IF_ERROR(Flatten(v, child(key), depth + 1));
      }
      return absl::OkStatus();
    }
    for (size_t i = 0; i < o->items.size(); ++i) {
      ZC_RETURN_IF_ERROR(Flatten(o->items[i], child(std::to_string(i)), depth + 1));
    }
    return absl::OkStatus();
  }

  absl::Status Finish() {
    if (out_.manifest.tensors_size() == 0) return Invalid("the file holds no tensors");
    std::set<std::string> names;
    for (const auto& t : out_.manifest.tensors()) {
      if (!names.insert(t.name()).second)
        return Invalid(absl::StrCat("two tensors flatten to the name '", t.name(), "'"));
    }
    if (!metadata_.empty()) out_.manifest.set_metadata(metadata_.dump(-1, ' ', false, json::error_handler_t::replace));
    return absl::OkStatus();
  }

 private:
  bool Spend() { return ++visits_ <= kMaxVisits; }
  static absl::Status OverBudget() {
    return Invalid(absl::StrCat("the pickle's object graph takes more than ", kMaxVisits, " steps to flatten"));
  }

  std::optional<json> ToJson(const Obj* o, int depth) {
    if (depth > kMaxDepth || !Spend()) return std::nullopt;
    switch (o->kind) {
      case Kind::kNone: return json(nullptr);
      case Kind::kBool: return json(o->b);
      case Kind::kInt: return json(o->i);
      case Kind::kFloat: return json(o->f);
      case Kind::kString: return json(o->s);
      case Kind::kList:
      case Kind::kTuple: {
        json arr = json::array();
        for (const Obj* item : o->items) {
          auto j = ToJson(item, depth + 1);
          if (!j) return std::nullopt;
          arr.push_back(std::move(*j));
        }
        return arr;
      }
      case Kind::kDict: {
        json obj = json::object();
        for (const auto& [k, v] : o->dict) {
          if (k->kind != Kind::kString) return std::nullopt;
          auto j = ToJson(v, depth + 1);
          if (!j) return std::nullopt;
          obj[k->s] = std::move(*j);
        }
        return obj;
      }
      default: return std::nullopt;
    }
  }

  // Memoized: shared sub-objects are walked once.
  bool HoldsTensor(const Obj* o, int depth) {
    if (depth > kMaxDepth || !Spend()) return true;  // Flatten reports depth and budget
    if (o->kind == Kind::kTensor) return true;
    auto known = holds_.find(o);
    if (known != holds_.end()) return known->second;
    bool holds = false;
    for (const Obj* item : o->items) holds = holds || HoldsTensor(item, depth + 1);
    for (const auto& kv : o->dict) holds = holds || HoldsTensor(kv.second, depth + 1);
    holds_.emplace(o, holds);
    return holds;
  }

  absl::Status AddTensor(const Obj* t, const std::string& name) {
    if (name.empty()) return Invalid("the file holds a bare tensor: save a dict of tensors");
    const ManifestLimits limits;
    if (static_cast<uint64_t>(out_.manifest.tensors_size()) >= limits.max_tensors) {
      return Invalid(absl::StrCat("the file holds more than ", limits.max_tensors, " tensors"));
    }
    if (name.size() > limits.max_tensor_name) {
      return Invalid(absl::StrCat("a tensor name of ", name.size(), " bytes; the limit is ", limits.max_tensor_name));
    }
    // A storage view (legacy format) is a part of its root storage: the
    // tensor lies in the root, further in (views of one root stay tied).
    const Obj* s = t->storage;
    uint64_t byte_offset = static_cast<uint64_t>(t->offset) * DTypeSize(t->dtype);  // within the storage: checked
    if (s->storage) {
      byte_offset += static_cast<uint64_t>(s->offset);
      s = s->storage;
    }
    auto [it, fresh] = storage_index_.emplace(s, static_cast<uint32_t>(out_.manifest.storages_size()));
    if (fresh) {
      out_.manifest.add_storages()->set_size(s->bytes);
      out_.storage_data.push_back(s->data);
    }
    auto* spec = out_.manifest.add_tensors();
    spec->set_name(name);
    spec->set_storage(it->second);
    spec->set_byte_offset(byte_offset);
    spec->set_dtype(t->dtype);
    bool contiguous = true;
    int64_t expected = 1;
    for (size_t d = t->shape.size(); d-- > 0;) {
      if (t->shape[d] != 1 && t->strides[d] != expected) contiguous = false;
      if (__builtin_mul_overflow(expected, t->shape[d], &expected)) contiguous = false;
    }
    for (int64_t d : t->shape) spec->add_shape(d);
    if (!contiguous) {
      for (int64_t st : t->strides) spec->add_strides(st);
    }
    return absl::OkStatus();
  }

  ModelSource& out_;
  json metadata_ = json::object();
  std::unordered_map<const Obj*, uint32_t> storage_index_;
  std::unordered_map<const Obj*, bool> holds_;
  uint64_t visits_ = 0;
};

// The state dict `root` as `out`'s manifest and storages; with
// `bare_tensor`, a tensor alone (named "tensor").
absl::Status Flatten(const Obj* root, ModelSource* out, bool bare_tensor) {
  if (root->kind != (bare_tensor ? Kind::kTensor : Kind::kDict)) {
    return Invalid(absl::StrCat("the file holds a ", KindName(root->kind),
                                bare_tensor ? ", not a tensor" : ", not a dict of tensors"));
  }
  out->manifest.set_format("torch");
  Flattener flattener(*out);
  ZC_RETURN_IF_ERROR(flattener.Flatten(root, bare_tensor ? "tensor" : "", 0));
  return flattener.Finish();
}

}  // namespace

absl::StatusOr<TorchSaveFile> TorchSaveFile::Open(const std::string& path) {
  std::shared_ptr<MappedRegion> region;
  ZC_ASSIGN_OR_RETURN(TorchSaveFile file, ParseMappedFile(path, &TorchSaveFile::Parse, &region));
  file.region_ = std::move(region);
  return file;
}

absl::StatusOr<TorchSaveFile> TorchSaveFile::Parse(const uint8_t* data, size_t size) {
  try {
    return ParseUnchecked(data, size, /*bare_tensor=*/false);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory parsing the torch.save archive");
  }
}

absl::StatusOr<TorchSaveFile> TorchSaveFile::ParseTensor(const uint8_t* data, size_t size) {
  try {
    return ParseUnchecked(data, size, /*bare_tensor=*/true);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory parsing the torch.save archive");
  }
}

absl::StatusOr<TorchSaveFile> TorchSaveFile::ParseUnchecked(const uint8_t* data, size_t size, bool bare_tensor) {
  if (internal::LegacyTorchMagicEnd(data, size)) {
    ZC_ASSIGN_OR_RETURN(pickle::Unpickled unpickled, internal::ReadLegacyTorchSave(data, size));
    TorchSaveFile file;
    ZC_RETURN_IF_ERROR(Flatten(unpickled.root, &file.source_, bare_tensor));
    return file;
  }
  if (size < 4 || std::memcmp(data, "PK\x03\x04", 4) != 0) {
    return Invalid(
        "not a zip archive (torch.save files since torch 1.6) nor a legacy torch.save file (no magic "
        "number)");
  }
  ZC_ASSIGN_OR_RETURN(std::vector<ZipEntry> entries, ReadZipDirectory(data, size));
  // <archive>/data.pkl, at the top level of the archive's one directory.
  const ZipEntry* pickle = nullptr;
  std::string prefix;
  for (const auto& e : entries) {
    auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash + 1, std::string::npos, "data.pkl") == 0) {
      if (pickle) return Invalid("archive holds two data.pkl entries");
      pickle = &e;
      prefix = e.name.substr(0, slash + 1);
    }
  }
  if (!pickle) return Invalid("archive has no <archive>/data.pkl: not a torch.save file");
  for (const auto& e : entries) {
    if (e.name == prefix + "constants.pkl")
      return Invalid("this is a TorchScript archive (torch.jit.save), not a torch.save file");
    if (e.name == prefix + "byteorder" &&
        (e.method != 0 || std::string_view(reinterpret_cast<const char*>(data + e.data_offset), e.size) != "little")) {
      return Invalid("archive was saved on a big-endian machine; re-save it on a little-endian one");
    }
  }
  if (pickle->method != 0) return Invalid("data.pkl is compressed; torch.save never does that");
  if (pickle->size > pickle::kMaxPickleBytes) {
    return Invalid(absl::StrCat("data.pkl is ", pickle->size, " bytes, over the limit"));
  }

  ZipStorages storages(data, prefix, entries);
  ZC_ASSIGN_OR_RETURN(pickle::Unpickled unpickled,
                      pickle::Unpickle(data + pickle->data_offset, pickle->size, {"data.pkl"}, &storages));
  TorchSaveFile file;
  ZC_RETURN_IF_ERROR(Flatten(unpickled.root, &file.source_, bare_tensor));
  return file;
}

}  // namespace zerocopy
