// The TorchScript reader, in libzerocopy_torch (LibTorch inside), declared
// without LibTorch headers so the CLI stays light to compile. (torch.save
// files need no LibTorch: TorchSaveFile.)
//
// torchscript:  a torch.jit.save archive. Parameters and buffers go into
//               the segment; the metadata is kTorchScriptMagic followed by
//               the archive re-saved with every such tensor replaced by an
//               empty one: the same layout the Python package publishes
//               (ray_zerocopy/_store.py, publish_jit), so both languages
//               load what either published.
//
// Trust: loading a TorchScript archive runs its TorchScript code
// (__setstate__ methods) inside LibTorch, whose deserializer is not built for
// hostile input. Preload and load TorchScript only from sources you trust;
// torch.save state dicts and safetensors are the formats for untrusted files.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "zerocopy/checkpoint.h"

namespace zerocopy {

inline constexpr char kTorchScriptMagic[] = "zerocopy-torchscript/1\n";

// Errors: NOT_FOUND, INVALID_ARGUMENT (corrupt or truncated archive,
// dtypes zerocopy cannot hold, sparse or quantized tensors; the message
// names the tensor).
absl::StatusOr<Checkpoint> ReadTorchScript(const std::string& path);

// Every format: ReadNativeCheckpoint plus TorchScript.
absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path, CheckpointFormat format);

}  // namespace zerocopy
