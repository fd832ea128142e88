// libFuzzer: torch.save files in both layouts (the seeds hold zip archives
// and legacy files, legacy_*): the zip directory, the legacy format's row
// of pickles and storage list, the restricted unpickler, the flattening,
// and the manifest it yields.
#include <cstddef>
#include <cstdint>

#include "zerocopy/manifest.h"
#include "zerocopy/torch_save_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = zerocopy::TorchSaveFile::Parse(data, size);
  if (file.ok()) {
    const auto& source = file->source();
    (void)zerocopy::ValidateManifest(source.manifest);
    // Every storage the reader points at lies inside the input.
    for (int i = 0; i < source.manifest.storages_size(); ++i) {
      auto* p = static_cast<const uint8_t*>(source.storage_data[i]);
      if (p < data || p + source.manifest.storages(i).size() > data + size) __builtin_trap();
    }
  }
  return 0;
}
