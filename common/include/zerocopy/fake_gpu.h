// The fake GPU protocol between zerocopyd and its clients (tests, and
// machines without a GPU that exercise the GPU paths). The daemon's "fake"
// backend (daemon/fake_backend.cc) keeps each device copy as a file in
// host memory and names it by a handle "fake:<path>"; a client maps that
// file shared and writable, as CUDA IPC maps device memory. A client
// process sees the fake GPUs listed, in ordinal order, in
// $ZEROCOPY_FAKE_GPUS (comma-separated UUIDs) instead of its CUDA devices.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace zerocopy::fake_gpu {

// The backend name a fake DeviceCopy carries (DeviceCopy.backend).
inline constexpr char kBackend[] = "fake";
// The environment variable listing this process's fake GPUs.
inline constexpr char kEnv[] = "ZEROCOPY_FAKE_GPUS";

// The handle of a copy kept in the file `path`.
std::string Handle(absl::string_view path);
// The file a handle names; none when it is not a fake handle.
std::optional<std::string> PathOf(absl::string_view handle);
// $ZEROCOPY_FAKE_GPUS, split; empty when unset (use the real GPUs).
std::vector<std::string> FromEnvironment();

}  // namespace zerocopy::fake_gpu
