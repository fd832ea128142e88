// The legacy torch.save layout (torch < 1.6, and
// torch.save(..., _use_new_zipfile_serialization=False) since), as
// torch/serialization.py's _legacy_save writes it: five things in a row,
//
//   pickle  the magic number 0x1950a86a20f9469cfc6c
//   pickle  the protocol version, 1001
//   pickle  sys_info: {"protocol_version", "little_endian", "type_sizes"}
//   pickle  the object, each storage a persistent id
//           ('storage', torch.FloatStorage, key, location, numel, view)
//           (view: None since torch 1.0; (view key, offset, numel) of a
//           storage slice before)
//   pickle  the list of storage keys, in the order their data follows
//   then, for each key: its element count (int64, little-endian) and its
//   numel * element-size bytes, little-endian whatever the machine that
//   saved it (torch converts), at no particular alignment.
//
// Every pickle goes through the restricted unpickler (nothing imported or
// called); the storages become views into the input, unaligned as they
// lie (Client::Publish copies bytes into the segment's 64-byte-aligned
// storages, so nothing here needs alignment). Bytes after the last
// storage are not read (torch does not read them either).
//
// Internal to formats/ (TorchSaveFile flattens the object).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "restricted_unpickler.h"

namespace zerocopy::internal {

// The end of the magic-number pickle `data` starts with (protocol 2 to 5),
// or nullopt when it does not start with one.
std::optional<size_t> LegacyTorchMagicEnd(const uint8_t* data, size_t size);

// The pickled object, its storages pointing into `data`. Errors:
// INVALID_ARGUMENT naming the pickle or storage and the byte offset (bad
// magic, wrong protocol version, refused opcodes and globals, a storage
// listed twice, missing from the list or the list naming one the object
// does not use, an element count that is not the pickle's numel, data
// past the end of the file).
absl::StatusOr<pickle::Unpickled> ReadLegacyTorchSave(const uint8_t* data, size_t size);

}  // namespace zerocopy::internal
