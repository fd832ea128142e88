// Element types: sizes, names, and their DLPack equivalents.
#pragma once

#include <cstddef>
#include <optional>
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

// The DLPack description of a dtype (lanes = 1). False if DLPack has none.
bool ToDLDataType(DType dtype, DLDataType* out);

}  // namespace zerocopy
