#include "zerocopy/dtype.h"

#include <dlpack/dlpack.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace zerocopy {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case v1::F64:
    case v1::I64:
    case v1::U64:
    case v1::C64: return 8;
    case v1::C128: return 16;
    case v1::F32:
    case v1::I32:
    case v1::U32: return 4;
    case v1::F16:
    case v1::BF16:
    case v1::I16:
    case v1::U16: return 2;
    case v1::I8:
    case v1::U8:
    case v1::BOOL:
    case v1::F8_E4M3:
    case v1::F8_E5M2: return 1;
    default: return 0;
  }
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case v1::F64: return "f64";
    case v1::F32: return "f32";
    case v1::F16: return "f16";
    case v1::BF16: return "bf16";
    case v1::I64: return "i64";
    case v1::I32: return "i32";
    case v1::I16: return "i16";
    case v1::I8: return "i8";
    case v1::U8: return "u8";
    case v1::U16: return "u16";
    case v1::U32: return "u32";
    case v1::U64: return "u64";
    case v1::BOOL: return "bool";
    case v1::C64: return "c64";
    case v1::C128: return "c128";
    case v1::F8_E4M3: return "f8_e4m3";
    case v1::F8_E5M2: return "f8_e5m2";
    default: return "?";
  }
}

std::optional<DType> DTypeFromSafetensors(absl::string_view name) {
  struct Entry {
    absl::string_view name;
    DType dtype;
  };
  static constexpr Entry kTable[] = {
      {"F64", v1::F64},   {"F32", v1::F32}, {"F16", v1::F16},         {"BF16", v1::BF16},
      {"I64", v1::I64},   {"I32", v1::I32}, {"I16", v1::I16},         {"I8", v1::I8},
      {"U8", v1::U8},     {"U16", v1::U16}, {"U32", v1::U32},         {"U64", v1::U64},
      {"BOOL", v1::BOOL}, {"C64", v1::C64}, {"F8_E4M3", v1::F8_E4M3}, {"F8_E5M2", v1::F8_E5M2},
  };
  for (const auto& e : kTable) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

absl::StatusOr<DType> ParseDType(absl::string_view wire_name) {
  DType parsed;
  if (!v1::DType_Parse(std::string(wire_name), &parsed) || parsed == v1::DTYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", wire_name, "'"));
  }
  return parsed;
}

const std::vector<std::pair<std::string, DType>>& TorchDTypes() {
  static const auto* table = new std::vector<std::pair<std::string, DType>>{
      {"float64", v1::F64},
      {"float32", v1::F32},
      {"float16", v1::F16},
      {"bfloat16", v1::BF16},
      {"int64", v1::I64},
      {"int32", v1::I32},
      {"int16", v1::I16},
      {"int8", v1::I8},
      {"uint8", v1::U8},
      {"bool", v1::BOOL},
      {"complex64", v1::C64},
      {"complex128", v1::C128},
      {"uint16", v1::U16},
      {"uint32", v1::U32},
      {"uint64", v1::U64},
      {"float8_e4m3fn", v1::F8_E4M3},
      {"float8_e5m2", v1::F8_E5M2},
  };
  return *table;
}

std::optional<DType> DTypeFromTorch(absl::string_view name) {
  absl::ConsumePrefix(&name, "torch.");
  for (const auto& [torch_name, dtype] : TorchDTypes()) {
    if (torch_name == name) return dtype;
  }
  return std::nullopt;
}

bool ToDLDataType(DType dtype, DLDataType* out) {
  out->lanes = 1;
  out->bits = static_cast<uint8_t>(DTypeSize(dtype) * 8);
  switch (dtype) {
    case v1::F64:
    case v1::F32:
    case v1::F16: out->code = kDLFloat; return true;
    case v1::BF16: out->code = kDLBfloat; return true;
    case v1::I64:
    case v1::I32:
    case v1::I16:
    case v1::I8: out->code = kDLInt; return true;
    case v1::U8:
    case v1::U16:
    case v1::U32:
    case v1::U64: out->code = kDLUInt; return true;
    case v1::BOOL:
      // kDLBool is 6 since DLPack 0.8 (torch reads it); Debian's header
      // is 0.6 and lacks the name.
      out->code = 6;
      return true;
    case v1::C64:
    case v1::C128: out->code = kDLComplex; return true;
    default: return false;
  }
}

}  // namespace zerocopy
