#include "zerocopy/digest.h"

#include <xxh_x86dispatch.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "absl/strings/string_view.h"
#include "absl/strings/str_format.h"
#include "zerocopy/parallel_for.h"

namespace zerocopy {

namespace {

void PutU64(std::string* out, uint64_t v) {
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(buf, 8);
}

uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

void PutBytes(std::string* out, absl::string_view bytes) {
  PutU64(out, bytes.size());
  out->append(bytes.data(), bytes.size());
}

}  // namespace

Hash128 HashBytes(const void* data, size_t size) {
  XXH128_hash_t h = XXH3_128bits_dispatch(data, size);
  return Hash128{h.high64, h.low64};
}

Hash128 HashLeaf(const uint8_t* segment, uint64_t size, size_t index) {
  uint64_t begin = static_cast<uint64_t>(index) * kDigestChunk;
  uint64_t len = std::min<uint64_t>(kDigestChunk, size - begin);
  return HashBytes(segment + begin, len);
}

LeafHasher::LeafHasher() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_128bits_reset(state_);
}

LeafHasher::~LeafHasher() { XXH3_freeState(state_); }

void LeafHasher::Update(const void* data, size_t size) { XXH3_128bits_update_dispatch(state_, data, size); }

void LeafHasher::UpdateZeros(uint64_t size) {
  static const uint8_t kZeros[64 << 10] = {};
  while (size > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(size, sizeof(kZeros)));
    Update(kZeros, n);
    size -= n;
  }
}

Hash128 LeafHasher::Finish() {
  XXH128_hash_t h = XXH3_128bits_digest(state_);
  return Hash128{h.high64, h.low64};
}

std::string CanonicalManifest(const v1::Manifest& manifest) {
  std::string out = "zerocopy-manifest-v1";
  PutBytes(&out, manifest.format());
  PutBytes(&out, manifest.metadata());
  PutU64(&out, manifest.storages_size());
  for (const auto& s : manifest.storages()) {
    PutU64(&out, s.size());
    PutU64(&out, s.offset());
  }
  PutU64(&out, manifest.total_size());
  PutU64(&out, manifest.tensors_size());
  for (const auto& t : manifest.tensors()) {
    PutBytes(&out, t.name());
    PutU64(&out, t.storage());
    PutU64(&out, t.byte_offset());
    PutU64(&out, static_cast<uint64_t>(t.dtype()));
    PutU64(&out, t.shape_size());
    for (int64_t d : t.shape()) PutU64(&out, static_cast<uint64_t>(d));
    PutU64(&out, t.strides_size());
    for (int64_t d : t.strides()) PutU64(&out, static_cast<uint64_t>(d));
  }
  return out;
}

std::string EncodeLeaves(const std::vector<Hash128>& leaves) {
  std::string buf;
  buf.reserve(leaves.size() * kLeafBytes);
  for (const auto& leaf : leaves) {
    PutU64(&buf, leaf.high);
    PutU64(&buf, leaf.low);
  }
  return buf;
}

absl::StatusOr<std::vector<Hash128>> DecodeLeaves(std::string_view bytes, uint64_t size) {
  const size_t count = DigestLeafCount(size);
  if (bytes.size() != count * kLeafBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("a %d-byte model has %d leaves (%d bytes), not %d bytes of them",
                                                      size, count, count * kLeafBytes, bytes.size()));
  }
  std::vector<Hash128> leaves(count);
  for (size_t i = 0; i < count; ++i) {
    leaves[i].high = GetU64(bytes.data() + i * kLeafBytes);
    leaves[i].low = GetU64(bytes.data() + i * kLeafBytes + 8);
  }
  return leaves;
}

absl::Status CheckLeaves(const void* data, uint64_t n, uint64_t offset, uint64_t size,
                         const std::vector<Hash128>& leaves, unsigned threads) {
  if (leaves.size() != DigestLeafCount(size)) {
    return absl::InvalidArgumentError(absl::StrFormat("%d leaves given for a %d-byte model of %d leaves", leaves.size(),
                                                      size, DigestLeafCount(size)));
  }
  if (offset > size || n > size - offset || offset % kDigestChunk != 0 ||
      (n % kDigestChunk != 0 && offset + n != size)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bytes [%d, %d) of a %d-byte model are not whole leaves of %d bytes", offset, offset + n, size, kDigestChunk));
  }
  const size_t first = offset / kDigestChunk;
  const size_t count = DigestLeafCount(n);
  std::vector<char> bad(count, 0);
  ParallelFor(count, threads, [&](size_t i) {
    const uint64_t begin = static_cast<uint64_t>(i) * kDigestChunk;
    bad[i] = HashBytes(static_cast<const uint8_t*>(data) + begin, std::min<uint64_t>(kDigestChunk, n - begin)) !=
             leaves[first + i];
  });
  auto it = std::find(bad.begin(), bad.end(), 1);
  if (it == bad.end()) return absl::OkStatus();
  const uint64_t leaf = first + (it - bad.begin());
  return absl::DataLossError(absl::StrFormat("bytes [%d, %d) of the model do not match their digest (leaf %d of %d)",
                                             leaf * kDigestChunk, std::min<uint64_t>((leaf + 1) * kDigestChunk, size),
                                             leaf, leaves.size()));
}

absl::Status CheckLeaves(const void* data, uint64_t n, uint64_t offset, uint64_t size, std::string_view leaves,
                         unsigned threads) {
  auto decoded = DecodeLeaves(leaves, size);
  if (!decoded.ok()) return decoded.status();
  return CheckLeaves(data, n, offset, size, *decoded, threads);
}

std::string CombineDigest(const std::vector<Hash128>& leaves, const v1::Manifest& manifest) {
  std::string buf = EncodeLeaves(leaves);
  buf += CanonicalManifest(manifest);
  Hash128 root = HashBytes(buf.data(), buf.size());
  return absl::StrFormat("%016x%016x", root.high, root.low);
}

std::string ComputeDigest(const uint8_t* segment, uint64_t size, const v1::Manifest& manifest, unsigned threads) {
  std::vector<Hash128> leaves(DigestLeafCount(size));
  ParallelFor(leaves.size(), threads, [&](size_t i) { leaves[i] = HashLeaf(segment, size, i); });
  return CombineDigest(leaves, manifest);
}

}  // namespace zerocopy
