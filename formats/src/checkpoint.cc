#include "zerocopy/checkpoint.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "zerocopy/byte_size.h"
#include "zerocopy/manifest.h"
#include "zerocopy/pt2_archive.h"
#include "zerocopy/safetensors_file.h"
#include "zerocopy/status.h"
#include "zerocopy/torch_save_file.h"
#include "zerocopy/unique_fd.h"
#include "zerocopy/zip_directory.h"
#include "json_nesting.h"
#include "legacy_torch_save.h"
#include "little_endian.h"

namespace zerocopy {

namespace {

using json = nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr size_t kMaxIndexBytes = 64 << 20;  // HF indexes are a few MiB at most
constexpr int kMaxNesting = 16;

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string Dirname(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Reads at most `limit` bytes of a regular file.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) return Invalid(absl::StrCat(path, " is not a regular file"));
  if (static_cast<uint64_t>(st.st_size) > limit) {
    return Invalid(absl::StrCat(path, " is ", st.st_size, " bytes, more than the limit of ", limit));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("read ", path));
    if (n == 0) return Invalid(absl::StrCat(path, " shrank while being read"));
    done += static_cast<size_t>(n);
  }
  return out;
}

// Tells a torch.save archive from a TorchScript one by the entries.
absl::StatusOr<CheckpointFormat> ZipKind(const std::string& path, const std::vector<ZipEntry>& entries) {
  if (IsPt2Archive(entries)) return CheckpointFormat::kTorchExport;
  bool data_pkl = false, constants_pkl = false;
  for (const auto& e : entries) {
    const std::string& n = e.name;
    auto slash = n.find('/');
    absl::string_view rest = slash == std::string::npos ? absl::string_view() : absl::string_view(n).substr(slash + 1);
    if (rest == "data.pkl") data_pkl = true;
    if (rest == "constants.pkl") constants_pkl = true;
  }
  if (data_pkl && constants_pkl) return CheckpointFormat::kTorchScript;
  if (data_pkl) return CheckpointFormat::kTorch;
  return Invalid(absl::StrCat(path,
                              " is a zip archive but not a torch.save file or TorchScript archive (no "
                              "<archive>/data.pkl entry) or torch.export archive (no <archive>/archive_format)"));
}

}  // namespace

const char* CheckpointFormatName(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::kSafetensors: return "safetensors";
    case CheckpointFormat::kShardedSafetensors: return "safetensors-sharded";
    case CheckpointFormat::kTorch: return "torch";
    case CheckpointFormat::kTorchScript: return "torchscript";
    case CheckpointFormat::kTorchExport: return kTorchExportFormat;
  }
  return "unknown";
}

absl::StatusOr<CheckpointFormat> ParseCheckpointFormat(absl::string_view name) {
  for (auto f : {CheckpointFormat::kSafetensors, CheckpointFormat::kShardedSafetensors, CheckpointFormat::kTorch,
                 CheckpointFormat::kTorchScript, CheckpointFormat::kTorchExport}) {
    if (name == CheckpointFormatName(f)) return f;
  }
  return Invalid(absl::StrCat("unknown format '", name,
                              "': expected safetensors, safetensors-sharded, torch, torchscript or torch-export"));
}

absl::StatusOr<CheckpointFormat> CheckpointFormatFor(const std::string& path, absl::string_view name) {
  return name == "auto" ? DetectCheckpointFormat(path) : ParseCheckpointFormat(name);
}

v1::Origin PreloadedFrom(const std::string& path) {
  v1::Origin origin;
  origin.set_kind("preloaded");
  char resolved[PATH_MAX];
  origin.set_source(OriginSource(::realpath(path.c_str(), resolved) ? resolved : path));
  return origin;
}

absl::StatusOr<std::string> ResolveCheckpointPath(const std::string& path) {
  if (!Exists(path)) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  if (!IsDirectory(path)) return path;
  std::string index = absl::StrCat(path, "/", kIndexName);
  if (Exists(index)) return index;
  std::string single = absl::StrCat(path, "/model.safetensors");
  if (Exists(single)) return single;
  std::vector<std::string> found;
  if (DIR* dir = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(dir)) {
      absl::string_view n = e->d_name;
      if (absl::EndsWith(n, ".safetensors") || absl::EndsWith(n, ".pt") || absl::EndsWith(n, ".pth") ||
          absl::EndsWith(n, ".bin")) {
        found.emplace_back(n);
      }
    }
    ::closedir(dir);
  } else {
    return ErrnoStatus(errno, absl::StrCat("open directory ", path));
  }
  if (found.size() == 1) return absl::StrCat(path, "/", found[0]);
  if (found.empty()) {
    return Invalid(absl::StrCat(path, " holds no checkpoint (", kIndexName,
                                ", model.safetensors, or one *.safetensors/*.pt/*.pth/*.bin file)"));
  }
  std::sort(found.begin(), found.end());
  return Invalid(absl::StrCat(path, " holds several checkpoint files (", found[0], ", ", found[1],
                              ", ...): name the one to preload"));
}

absl::StatusOr<CheckpointFormat> DetectCheckpointFormat(const std::string& input) {
  ZC_ASSIGN_OR_RETURN(std::string path, ResolveCheckpointPath(input));
  if (absl::EndsWith(path, ".index.json")) return CheckpointFormat::kShardedSafetensors;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) return Invalid(absl::StrCat(path, " is not a regular file"));
  uint8_t head[32] = {};  // a legacy torch.save magic pickle fits
  ssize_t n = ::pread(fd.get(), head, sizeof head, 0);
  if (n < 0) return ErrnoStatus(errno, absl::StrCat("read ", path));
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) {
    ZC_ASSIGN_OR_RETURN(MappedRegion region, MappedRegion::MapFile(path));
    auto entries = ReadZipDirectory(region.data(), region.size());
    if (!entries.ok()) return Annotate(entries.status(), path);
    return ZipKind(path, *entries);
  }
  // The legacy (pre-zip) torch.save format: TorchSaveFile reads both.
  if (internal::LegacyTorchMagicEnd(head, static_cast<size_t>(n))) return CheckpointFormat::kTorch;
  if (n >= 9) {
    uint64_t header_len = internal::Le64(head);
    if (header_len >= 2 && header_len <= static_cast<uint64_t>(st.st_size) - 8 && head[8] == '{') {
      return CheckpointFormat::kSafetensors;
    }
  }
  return Invalid(absl::StrCat(path,
                              " is not a checkpoint zerocopy knows (safetensors, a torch.save file, "
                              "a TorchScript or torch.export archive, or a directory with ",
                              kIndexName, ")"));
}

absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view text) {
  if (!internal::JsonNestingWithin(text, kMaxNesting)) return Invalid("shard index JSON is nested too deeply");
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Invalid("shard index is not valid JSON");
  if (!doc.is_object()) return Invalid("shard index is not a JSON object");
  auto wm = doc.find("weight_map");
  if (wm == doc.end() || !wm->is_object()) return Invalid("shard index has no \"weight_map\" object");
  if (wm->empty()) return Invalid("shard index's weight_map is empty");
  ShardIndex index;
  std::set<std::string> shards;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) return Invalid(absl::StrCat("weight_map entry '", it.key(), "' is not a file name"));
    std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\0') != std::string::npos) {
      return Invalid(absl::StrCat("weight_map entry '", it.key(), "' names '", shard,
                                  "', which is not a plain file name in the index's directory"));
    }
    if (it.key().empty()) return Invalid("weight_map has an empty tensor name");
    shards.insert(shard);
    index.weight_map.emplace_back(it.key(), std::move(shard));
  }
  index.shards.assign(shards.begin(), shards.end());
  auto md = doc.find("metadata");
  if (md != doc.end() && !md->is_null()) {
    if (!md->is_object()) return Invalid("shard index's \"metadata\" is not an object");
    index.metadata_json = md->dump();
  }
  return index;
}

absl::StatusOr<Checkpoint> ReadShardedSafetensors(const std::string& input) {
  ZC_ASSIGN_OR_RETURN(std::string path, ResolveCheckpointPath(input));
  ZC_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, kMaxIndexBytes));
  auto index = ParseShardIndex(text);
  if (!index.ok()) return Annotate(index.status(), path);
  const std::string dir = Dirname(path);

  Checkpoint out;
  out.source.manifest.set_format("safetensors-sharded");
  if (!index->metadata_json.empty()) out.source.manifest.set_metadata(index->metadata_json);
  std::map<std::string, std::shared_ptr<SafetensorsFile>> files;
  for (const auto& shard : index->shards) {
    std::string shard_path = absl::StrCat(dir, "/", shard);
    if (!Exists(shard_path)) {
      return absl::NotFoundError(absl::StrCat(path, " names shard ", shard, ", which is not in ", dir));
    }
    ZC_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(shard_path));
    auto shared = std::make_shared<SafetensorsFile>(std::move(file));
    out.owners.push_back(shared);
    files.emplace(shard, std::move(shared));
  }
  // Every tensor of every shard is in the index, under that shard.
  std::map<absl::string_view, const std::string*> owner;
  for (const auto& [tensor, shard] : index->weight_map) owner.emplace(tensor, &shard);
  for (const auto& [shard, file] : files) {
    for (const auto& e : file->tensors()) {
      auto it = owner.find(e.name);
      if (it == owner.end()) {
        return Invalid(absl::StrCat(path, ": shard ", shard, " holds tensor '", e.name, "', which the index lacks"));
      }
      if (*it->second != shard) {
        return Invalid(
            absl::StrCat(path, ": tensor '", e.name, "' is in shard ", shard, " but the index says ", *it->second));
      }
    }
  }
  for (const auto& [tensor, shard] : index->weight_map) {
    const auto& entries = files.at(shard)->tensors();
    auto it = std::lower_bound(entries.begin(), entries.end(), tensor,
                               [](const SafetensorsFile::Entry& e, const std::string& n) { return e.name < n; });
    if (it == entries.end() || it->name != tensor) {
      return Invalid(absl::StrCat(path, ": tensor '", tensor, "' is not in shard ", shard));
    }
    auto* storage = out.source.manifest.add_storages();
    storage->set_size(it->size);
    auto* t = out.source.manifest.add_tensors();
    t->set_name(tensor);
    t->set_storage(static_cast<uint32_t>(out.source.manifest.storages_size() - 1));
    t->set_dtype(it->dtype);
    for (int64_t d : it->shape) t->add_shape(d);
    out.source.storage_data.push_back(it->data);
  }
  return out;
}

namespace {

// A checkpoint whose storages point into `file`, which it keeps alive.
template <typename File, typename ToSource>
Checkpoint Owning(File file, ToSource to_source) {
  auto shared = std::make_shared<File>(std::move(file));
  Checkpoint out;
  out.source = to_source(*shared);
  out.owners.push_back(std::move(shared));
  return out;
}

}  // namespace

absl::StatusOr<Checkpoint> ReadTorchSave(const std::string& path) {
  ZC_ASSIGN_OR_RETURN(TorchSaveFile file, TorchSaveFile::Open(path));
  return Owning(std::move(file), [](const TorchSaveFile& f) { return f.source(); });
}

namespace {

absl::StatusOr<Checkpoint> ReadWeights(const std::string& path, CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::kSafetensors: {
      ZC_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
      return Owning(std::move(file), [](const SafetensorsFile& f) { return f.ToModelSource(); });
    }
    case CheckpointFormat::kShardedSafetensors: return ReadShardedSafetensors(path);
    case CheckpointFormat::kTorch: return ReadTorchSave(path);
    case CheckpointFormat::kTorchExport: return ReadPt2Archive(path);
    case CheckpointFormat::kTorchScript: break;
  }
  return absl::UnimplementedError(absl::StrCat(path, " is a ", CheckpointFormatName(format),
                                               " file, which needs a build with LibTorch (ZEROCOPY_WITH_TORCH)"));
}

// Whether a directory entry is weights, an index of them, a document or
// hidden: not kept with the model.
bool LeftOut(absl::string_view name) {
  static constexpr const char* kWeights[] = {".safetensors", ".bin",     ".pt",         ".pth",  ".ckpt",
                                             ".h5",          ".msgpack", ".onnx",       ".gguf", ".tflite",
                                             ".ot",          ".npz",     ".index.json", ".md"};
  if (absl::StartsWith(name, ".") || absl::StartsWith(name, "README") || absl::StartsWith(name, "LICENSE")) {
    return true;
  }
  for (const char* suffix : kWeights) {
    if (absl::EndsWith(name, suffix)) return true;
  }
  return false;
}

}  // namespace

absl::Status AddDirectoryFiles(const std::string& dir, Checkpoint* checkpoint, uint64_t limit) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return ErrnoStatus(errno, absl::StrCat("open directory ", dir));
  std::vector<std::pair<std::string, uint64_t>> found;  // name, size
  uint64_t total = 0;
  while (const dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (LeftOut(name)) continue;
    struct stat st;
    if (::stat(absl::StrCat(dir, "/", name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    found.emplace_back(std::move(name), static_cast<uint64_t>(st.st_size));
    total += static_cast<uint64_t>(st.st_size);
  }
  std::sort(found.begin(), found.end());
  if (total > limit) {
    auto largest = found;
    std::sort(largest.begin(), largest.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string names;
    for (size_t i = 0; i < largest.size() && i < 3; ++i) {
      absl::StrAppend(&names, i ? ", " : "", largest[i].first, " (", FormatBytes(largest[i].second, 1), ")");
    }
    return Invalid(absl::StrCat(dir, ": the files kept with the weights (config, tokenizer, ...) take ",
                                FormatBytes(total, 1), ", more than the ", FormatBytes(limit, 0),
                                " a model keeps; the largest: ", names,
                                ". Move what the model does not need out of the directory"));
  }
  auto& manifest = checkpoint->source.manifest;
  for (const auto& [name, size] : found) {
    const std::string path = absl::StrCat(dir, "/", name);
    ZC_ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(path, limit));
    ZC_RETURN_IF_ERROR(Annotate(ValidateFileName(name), path));
    auto owned = std::make_shared<std::string>(std::move(bytes));
    manifest.add_storages()->set_size(owned->size());
    auto* file = manifest.add_files();
    file->set_name(name);
    file->set_storage(static_cast<uint32_t>(manifest.storages_size() - 1));
    checkpoint->source.storage_data.push_back(owned->data());
    checkpoint->owners.push_back(std::move(owned));
  }
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> ReadNativeCheckpoint(const std::string& input, CheckpointFormat format) {
  ZC_ASSIGN_OR_RETURN(std::string path, ResolveCheckpointPath(input));
  ZC_ASSIGN_OR_RETURN(Checkpoint checkpoint, ReadWeights(path, format));
  if (IsDirectory(input)) ZC_RETURN_IF_ERROR(AddDirectoryFiles(input, &checkpoint));
  return checkpoint;
}

}  // namespace zerocopy
