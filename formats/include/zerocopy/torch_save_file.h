// TorchSaveFile: a validated, zero-copy view of a torch.save file (.pt,
// .pth, .bin) holding a state dict, read without LibTorch.
//
// Two layouts, told apart by their first bytes. The zip archive (torch >=
// 1.6) holds stored (uncompressed) entries: <a>/data.pkl, a pickle of the
// object with every storage replaced by a persistent id ('storage',
// torch.FloatStorage, key, location, numel), and <a>/data/<key>, the
// storages' bytes. The legacy format (torch < 1.6, or
// _use_new_zipfile_serialization=False) is a row of pickles, the object's
// among them, and then the storages' bytes (src/legacy_torch_save.h). We
// map the file and run a restricted unpickler that knows the handful of
// globals a state dict needs (collections.OrderedDict,
// torch._utils._rebuild_tensor_v2, _rebuild_parameter, the torch.*Storage
// types): any other global (a pickled class, a function, numpy) is
// refused, so a checkpoint can never run code. Tensors become views into
// the file's mapping; tensors sharing a storage key share one storage
// (tied weights stay tied), and so do the legacy format's storage views of
// one storage. A legacy storage's bytes lie at any alignment, and
// storage_data points at them as they are: Client::Publish copies bytes
// into the segment's aligned storages, and needs no alignment of them.
//
// Flattening: nested dicts give dotted names ("model.fc.weight"), integer
// keys included (optimizer state); lists and tuples of tensors by index.
// Non-tensor leaves (numbers, strings, bools, None, lists and dicts of
// them) become metadata: a JSON object by dotted name.
//
// Errors are INVALID_ARGUMENT naming the rule broken: truncated archive,
// bad zip directory, compressed entries, unknown opcodes or globals,
// storages missing or smaller than their tensors, big-endian archives, a
// legacy file's storage list or element counts not matching its object,
// and pickles over budget (64 MiB, 2 M objects, 1 M steps to flatten: a
// small pickle can describe an exponential tree of shared objects).
//
// The file must not shrink while its source is in use: a truncated mapping
// faults (SIGBUS) on the bytes that went away, as with any mmap'd file.
//
// Thread safety: immutable after creation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/model_source.h"

namespace zerocopy {

class TorchSaveFile {
 public:
  static absl::StatusOr<TorchSaveFile> Open(const std::string& path);
  // Bytes the caller keeps alive while this object is used.
  static absl::StatusOr<TorchSaveFile> Parse(const uint8_t* data, size_t size);
  // torch.save of one tensor (an AOTInductor package's weight records):
  // one tensor named "tensor". Errors as Parse's, and for anything else.
  static absl::StatusOr<TorchSaveFile> ParseTensor(const uint8_t* data, size_t size);

  TorchSaveFile(TorchSaveFile&&) = default;
  TorchSaveFile& operator=(TorchSaveFile&&) = default;

  // Format "torch"; one storage per storage key; points into the file.
  const ModelSource& source() const { return source_; }

 private:
  TorchSaveFile() = default;
  static absl::StatusOr<TorchSaveFile> ParseUnchecked(const uint8_t* data, size_t size, bool bare_tensor);
  std::shared_ptr<MappedRegion> region_;
  ModelSource source_;
};

}  // namespace zerocopy
