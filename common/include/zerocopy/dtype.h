// Element types: sizes, names, and their DLPack equivalents.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "zerocopy/v1/model_store.pb.h"

#include <dlpack/dlpack.h>

namespace zerocopy {

using DType = ::zerocopy::v1::DType;

// Bytes per element; 0 for DTYPE_UNSPECIFIED and unknown values.
size_t DTypeSize(DType dtype);

// Short lowercase name: "f32", "bf16", "bool", ...; "?" for unknown.
absl::string_view DTypeName(DType dtype);

// The dtype a safetensors header names ("F32", "BF16", "BOOL", ...).
std::optional<DType> DTypeFromSafetensors(absl::string_view name);

// The dtype of its wire name, the enum's ("F32", "BF16", "F8_E4M3", ...),
// as clients send it. INVALID_ARGUMENT for anything else.
absl::StatusOr<DType> ParseDType(absl::string_view wire_name);

// torch's name for each dtype zerocopy holds ("float32", "bfloat16",
// "float8_e4m3fn", ...): the one table the unpickler and the Python
// package use.
const std::vector<std::pair<std::string, DType>>& TorchDTypes();
// The dtype of a torch name, with or without "torch.".
std::optional<DType> DTypeFromTorch(absl::string_view name);

// The DLPack description of a dtype (lanes = 1). False if DLPack has none.
bool ToDLDataType(DType dtype, DLDataType* out);

}  // namespace zerocopy
