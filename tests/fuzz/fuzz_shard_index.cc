// libFuzzer: the sharded-checkpoint index parser.
#include <cstddef>
#include <cstdint>

#include "zerocopy/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto index = zerocopy::ParseShardIndex(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (index.ok() && index->shards.empty()) __builtin_trap();  // a parsed index names at least one shard
  return 0;
}
