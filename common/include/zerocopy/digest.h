// Content digests of models: XXH3-128 over the segment, as a tree so that
// publishers and the daemon hash in parallel.
//
//   leaf[i] = XXH3-128(segment[i*kDigestChunk, (i+1)*kDigestChunk))
//   digest  = XXH3-128(leaf[0] .. leaf[n-1] || canonical(manifest))
//
// canonical(manifest) encodes names, dtypes, shapes, strides, storages and
// metadata in a fixed order, so equal bytes with different tensor names are
// different models. Digests print as 32 lowercase hex digits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zerocopy/v1/model_store.pb.h"

struct XXH3_state_s;

namespace zerocopy {

inline constexpr size_t kDigestChunk = 4u << 20;

struct Hash128 {
  uint64_t high = 0;
  uint64_t low = 0;
  bool operator==(const Hash128& o) const { return high == o.high && low == o.low; }
  bool operator!=(const Hash128& o) const { return !(*this == o); }
};

// XXH3-128 of one buffer, using the CPU's widest vector unit.
Hash128 HashBytes(const void* data, size_t size);

// Number of leaves for a segment of `size` bytes.
inline size_t DigestLeafCount(uint64_t size) { return static_cast<size_t>((size + kDigestChunk - 1) / kDigestChunk); }

// The leaf hash of chunk `index` of `segment` (which is `size` bytes long).
Hash128 HashLeaf(const uint8_t* segment, uint64_t size, size_t index);

// A leaf's hash made in pieces, equal to HashLeaf over the same bytes:
// what a publisher that writes a chunk from several sources (with the
// layout's zero padding between them) hashes as it goes, never reading
// the segment back.
class LeafHasher {
 public:
  LeafHasher();
  ~LeafHasher();
  LeafHasher(const LeafHasher&) = delete;
  LeafHasher& operator=(const LeafHasher&) = delete;

  void Update(const void* data, size_t size);
  void UpdateZeros(uint64_t size);  // `size` zero bytes (the layout's padding)
  Hash128 Finish();

 private:
  XXH3_state_s* state_;  // xxhash's streaming state (made by its allocator: it is aligned)
};

// A leaf list as it travels and is kept (a model's record, GetModel's
// answer, a cluster pull): each leaf's high then low half, 8 bytes each,
// little-endian, in leaf order: the bytes CombineDigest hashes.
inline constexpr size_t kLeafBytes = 16;
std::string EncodeLeaves(const std::vector<Hash128>& leaves);
// Errors: INVALID_ARGUMENT unless `bytes` holds DigestLeafCount(size) leaves.
absl::StatusOr<std::vector<Hash128>> DecodeLeaves(std::string_view bytes, uint64_t size);

// Checks bytes [offset, offset + n) of a segment of `size` bytes against
// its leaves, as a receiver does before it keeps or forwards a piece of a
// model that came from someone else: `offset` on a leaf boundary, `n`
// whole leaves or up to the segment's end. Leaves are hashed with up to
// `threads` threads (0: one per core). Errors: INVALID_ARGUMENT (a range
// that is not so, a wrong number of leaves), DATA_LOSS naming the first
// leaf whose bytes differ.
absl::Status CheckLeaves(const void* data, uint64_t n, uint64_t offset, uint64_t size,
                         const std::vector<Hash128>& leaves, unsigned threads = 1);
// The same with the leaves as EncodeLeaves bytes.
absl::Status CheckLeaves(const void* data, uint64_t n, uint64_t offset, uint64_t size, std::string_view leaves,
                         unsigned threads = 1);

// The model digest from its leaves and manifest.
std::string CombineDigest(const std::vector<Hash128>& leaves, const ::zerocopy::v1::Manifest& manifest);

// Hashes a whole segment with up to `threads` threads (0: one per core).
std::string ComputeDigest(const uint8_t* segment, uint64_t size, const ::zerocopy::v1::Manifest& manifest,
                          unsigned threads = 0);

// The canonical byte encoding of a manifest that the digest covers.
std::string CanonicalManifest(const ::zerocopy::v1::Manifest& manifest);

}  // namespace zerocopy
