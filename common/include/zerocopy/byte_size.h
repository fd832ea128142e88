// Byte sizes as people write and read them, one spelling for the daemon's
// configuration and messages and the CLI's output.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zerocopy {

// "4096", "8G", "512MiB", "1.5T", "50%" (of physical RAM). Errors:
// INVALID_ARGUMENT, saying what is expected.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// "1.50 GiB" (`decimals` after the point; plain bytes below 1 KiB: "512 B").
std::string FormatBytes(uint64_t bytes, int decimals = 2);

// This machine's physical memory in bytes (0 if unknown).
uint64_t PhysicalMemory();

}  // namespace zerocopy
