// Pt2Archive: a torch.export.save archive (.pt2, an ExportedProgram: the
// program as JSON, its weights and tensor constants as raw bytes) or an
// AOTInductor package, read without LibTorch and without running anything
// from it.
//
// The archive (torch/export/pt2_archive, format "pt2", version 0) is a zip
// of stored entries under one top directory <a>/:
//   archive_format, archive_version, byteorder, .data/...   small markers
//   models/<m>.json                     the program (one per archive here)
//   data/weights/<m>_weights_config.json   fqn -> {path_name, is_param,
//                                          use_pickle, tensor_meta}
//   data/weights/weight_<k>             a storage's raw bytes
//   data/constants/<m>_constants_config.json, data/constants/tensor_<k>
//   data/sample_inputs/<m>.pt, extra/...  kept as they are
// Each weight_<k>/tensor_<k> record becomes a storage of the model, used in
// place in the file's mapping; each fqn a tensor over it (tensor_meta's
// dtype, sizes, strides, storage_offset), so weights that share a record
// (tied) share a storage. Every other entry is kept with the model as a
// file (Manifest.files, named by its path under <a>/): the program, both
// configs, the sample inputs, the markers. ray_zerocopy.load_exported
// rebuilds the ExportedProgram from those files and the mapped tensors
// with torch's own deserializer; zerocopy never parses the program.
//
// Refused (INVALID_ARGUMENT naming the entry or tensor): not a pt2 archive,
// an archive version or byte order other than 0 and little, compressed
// entries, several programs, weights or constants stored as pickles
// (tensor subclasses), script objects and opaque constants, layouts other
// than strided, symbolic sizes, dtypes zerocopy does not hold, a tensor
// outside its record, a name used by a weight and a constant, program
// files over kMaxProgramFileBytes in all.
//
// An AOTInductor package (aoti_compile_and_package: entries under
// data/aotinductor/<m>/, the compiled library and its metadata) is read
// the same way when it keeps its weights beside the library
// (inductor_configs aot_inductor.package_constants_in_so False and
// package_constants_on_disk_format "pickle_weights"): its
// data/aotinductor/<m>/weights_config.json maps each fqn to [record,
// sizes, strides, offset], each record under data/weights/ a torch.save of
// one tensor (TorchSaveFile::ParseTensor: its storage used in place).
// Format "aoti"; the library and everything else kept as files, loaded by
// torch's own AOTIModelPackageLoader with the mapped tensors as its
// constants (ray_zerocopy.load_aoti, zerocopy::LoadAotInductor). A package
// with its weights inside the library (torch's default) is refused, saying
// how to compile it instead.
//
// Thread safety: the Checkpoint it returns is immutable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/checkpoint.h"
#include "zerocopy/zip_directory.h"

namespace zerocopy {

inline constexpr char kTorchExportFormat[] = "torch-export";
inline constexpr char kAotInductorFormat[] = "aoti";
inline constexpr uint64_t kMaxProgramFileBytes = 256ull << 20;

// The archive at `path`, its storages pointing into the file's mapping
// (which the Checkpoint keeps alive). Format "torch-export" or "aoti".
absl::StatusOr<Checkpoint> ReadPt2Archive(const std::string& path);

// The same over bytes the caller keeps alive while the result is used.
absl::StatusOr<Checkpoint> ParsePt2Archive(const uint8_t* data, size_t size);

// Whether zip entries name a pt2 archive (<a>/archive_format present).
bool IsPt2Archive(const std::vector<ZipEntry>& entries);

}  // namespace zerocopy
