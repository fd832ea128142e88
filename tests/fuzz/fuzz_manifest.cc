// libFuzzer: manifest validation and layout on arbitrary protobuf bytes
// (what CreateModel receives). A manifest that validates gets a layout that
// checks, whose storages fit their segment and whose tensors fit their
// storages.
#include <cstddef>
#include <cstdint>

#include <google/protobuf/stubs/logging.h>

#include "zerocopy/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static google::protobuf::LogSilencer quiet;  // invalid UTF-8 in string fields is logged, then refused
  zerocopy::v1::Manifest manifest;
  if (!manifest.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!zerocopy::ValidateManifest(manifest).ok()) return 0;
  if (!zerocopy::AssignOffsets(&manifest).ok()) return 0;
  if (!zerocopy::CheckLayout(manifest).ok()) __builtin_trap();
  for (const auto& s : manifest.storages()) {
    if (s.offset() + s.size() < s.offset() || s.offset() + s.size() > manifest.total_size()) __builtin_trap();
  }
  for (const auto& t : manifest.tensors()) {
    auto extent = zerocopy::TensorExtent(t);
    if (!extent.ok()) __builtin_trap();  // validated tensors have an extent
    const auto& s = manifest.storages(static_cast<int>(t.storage()));
    if (t.byte_offset() + *extent > s.size()) __builtin_trap();
  }
  return 0;
}
