// libFuzzer: torch.export archives (.pt2): the zip directory, the archive's
// markers, the weights' and constants' JSON configs, and the manifest they
// yield (formats/pt2_archive.h).
#include <cstddef>
#include <cstdint>

#include "zerocopy/manifest.h"
#include "zerocopy/pt2_archive.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto checkpoint = zerocopy::ParsePt2Archive(data, size);
  if (checkpoint.ok()) {
    const auto& source = checkpoint->source;
    (void)zerocopy::ValidateManifest(source.manifest);
    // Every storage the reader points at lies inside the input.
    for (int i = 0; i < source.manifest.storages_size(); ++i) {
      auto* p = static_cast<const uint8_t*>(source.storage_data[i]);
      if (p < data || p + source.manifest.storages(i).size() > data + size) __builtin_trap();
    }
  }
  return 0;
}
