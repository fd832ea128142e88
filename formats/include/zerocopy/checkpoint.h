// Checkpoints on disk -> ModelSource, for `zerocopy preload` and C++
// publishers. Files are parsed here, in the publisher's process, never by
// the daemon.
//
// Formats (detected from the content, never the file name):
//   safetensors           one .safetensors file (SafetensorsFile)
//   safetensors-sharded   a Hugging Face checkpoint directory, or its
//                         model.safetensors.index.json, naming shard files
//   torch                 a torch.save file of a (nested) state dict, zip
//                         archive or the legacy (pre-1.6) format
//                         (TorchSaveFile: our own restricted unpickler)
//   torchscript           a torch.jit.save archive; libzerocopy_torch
//   torch-export          a torch.export.save archive (.pt2) of an
//                         ExportedProgram (Pt2Archive: the weights and
//                         constants as tensors, the program as files)
//
// Thread safety: a Checkpoint is immutable after it is read.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/model_source.h"

namespace zerocopy {

enum class CheckpointFormat { kSafetensors, kShardedSafetensors, kTorch, kTorchScript, kTorchExport };

// "safetensors", "safetensors-sharded", "torch", "torchscript", "torch-export".
const char* CheckpointFormatName(CheckpointFormat format);
// Errors: INVALID_ARGUMENT naming the accepted values.
absl::StatusOr<CheckpointFormat> ParseCheckpointFormat(absl::string_view name);

// A ModelSource plus whatever keeps its storage_data pointers valid (file
// mappings, buffers).
struct Checkpoint {
  ModelSource source;
  std::vector<std::shared_ptr<const void>> owners;
};

// Looks at the content: a directory holding model.safetensors.index.json
// (sharded), model.safetensors or one *.safetensors file; a file starting
// with the zip magic (torch, torchscript or torch-export: tells them apart
// by the archive's entries); the legacy torch.save magic number (torch); a
// safetensors header. Errors: NOT_FOUND, INVALID_ARGUMENT (unknown
// content, an empty or ambiguous directory).
absl::StatusOr<CheckpointFormat> DetectCheckpointFormat(const std::string& path);

// The format `name` names for `path`: "auto" looks at the content
// (DetectCheckpointFormat), anything else is parsed (ParseCheckpointFormat).
absl::StatusOr<CheckpointFormat> CheckpointFormatFor(const std::string& path, absl::string_view name);

// What a preload of `path` records as the model's origin: kind
// "preloaded", source its real path (`path` itself if that fails).
::zerocopy::v1::Origin PreloadedFrom(const std::string& path);

// The file a directory stands for (the index, or the single safetensors
// file); a file path is returned as is.
absl::StatusOr<std::string> ResolveCheckpointPath(const std::string& path);

// The index of a sharded checkpoint:
//   {"metadata": {...}, "weight_map": {"tensor": "shard-file", ...}}
// Every shard name must be a plain file name in the index's directory (no
// '/', not "." or ".."). Errors: INVALID_ARGUMENT naming the rule.
struct ShardIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard, sorted by tensor
  std::vector<std::string> shards;                              // distinct, sorted
  std::string metadata_json;                                    // "" when absent
};
absl::StatusOr<ShardIndex> ParseShardIndex(absl::string_view json_text);

// Reads a sharded safetensors checkpoint (its directory or index file) as
// one model: each shard mapped read-only and validated, every tensor of the
// index found in the shard it names, no tensor missing from the index or
// present twice. Errors: NOT_FOUND (a shard), INVALID_ARGUMENT.
absl::StatusOr<Checkpoint> ReadShardedSafetensors(const std::string& path);

// The small files a model directory keeps beside its weights (a Hugging
// Face model's config.json, generation_config.json, tokenizer and processor
// files), added to `checkpoint` as files (Manifest.files): every regular
// file at the top of `dir`, symlinks followed (a Hugging Face cache
// snapshot links into its blobs/), but weights (*.safetensors, *.bin, *.pt,
// *.pth, *.ckpt, *.h5, *.msgpack, *.onnx, *.gguf, *.tflite, *.ot, *.npz),
// their indexes, documents (README*, LICENSE*, *.md) and hidden files;
// subdirectories are left out. Errors: INVALID_ARGUMENT when they take
// more than `limit` bytes in all (naming the largest), or a file could not
// be read.
inline constexpr uint64_t kMaxDirectoryFileBytes = 64ull << 20;
absl::Status AddDirectoryFiles(const std::string& dir, Checkpoint* checkpoint, uint64_t limit = kMaxDirectoryFileBytes);

// safetensors, safetensors-sharded, torch and torch-export; torchscript needs
// libzerocopy_torch (ReadCheckpoint in torch_formats.h). A directory's
// small files come along (AddDirectoryFiles).
absl::StatusOr<Checkpoint> ReadNativeCheckpoint(const std::string& path, CheckpointFormat format);

// A torch.save file of a state dict (TorchSaveFile), without LibTorch.
absl::StatusOr<Checkpoint> ReadTorchSave(const std::string& path);

}  // namespace zerocopy
