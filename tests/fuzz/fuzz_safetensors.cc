// libFuzzer: the safetensors header parser, and the manifest it yields.
#include <cstddef>
#include <cstdint>

#include "zerocopy/manifest.h"
#include "zerocopy/safetensors_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = zerocopy::SafetensorsFile::Parse(data, size);
  if (file.ok()) {
    zerocopy::ModelSource source = file->ToModelSource();
    (void)zerocopy::ValidateManifest(source.manifest);
  }
  return 0;
}
