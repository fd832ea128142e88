// Digests: deterministic, independent of thread count, sensitive to every
// byte and to the manifest.
#include <algorithm>
#include <vector>

#include <catch2/catch.hpp>

#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"

namespace zerocopy {
namespace {

struct Segment {
  Manifest manifest;
  std::vector<uint8_t> bytes;
};

Segment Make(uint64_t size) {
  Segment s;
  s.manifest.add_storages()->set_size(size);
  auto* t = s.manifest.add_tensors();
  t->set_name("w");
  t->set_dtype(v1::U8);
  t->add_shape(static_cast<int64_t>(size));
  REQUIRE(AssignOffsets(&s.manifest).ok());
  s.bytes.resize(s.manifest.total_size());
  for (size_t i = 0; i < size; ++i) s.bytes[i] = static_cast<uint8_t>(i * 131 + 7);
  return s;
}

std::string Digest(const Segment& s, unsigned threads = 0) {
  return ComputeDigest(s.bytes.data(), s.bytes.size(), s.manifest, threads);
}

TEST_CASE("digest is 32 hex digits and deterministic", "[digest]") {
  Segment s = Make(10 * kDigestChunk + 12345);  // several leaves, a partial last one
  std::string d = Digest(s);
  REQUIRE(IsDigest(d));
  REQUIRE(Digest(s, 1) == d);
  REQUIRE(Digest(s, 3) == d);
  REQUIRE(Digest(s, 16) == d);
}

TEST_CASE("digest changes with any byte or the manifest", "[digest]") {
  Segment s = Make(3 * kDigestChunk);
  std::string d = Digest(s);
  for (size_t pos : {size_t{0}, kDigestChunk - 1, kDigestChunk, 3 * kDigestChunk - 1}) {
    Segment t = s;
    t.bytes[pos] ^= 1;
    INFO(pos);
    REQUIRE(Digest(t) != d);
  }
  Segment renamed = s;
  renamed.manifest.mutable_tensors(0)->set_name("v");
  REQUIRE(Digest(renamed) != d);
  Segment retyped = s;
  retyped.manifest.mutable_tensors(0)->set_dtype(v1::I8);
  REQUIRE(Digest(retyped) != d);
  Segment meta = s;
  meta.manifest.set_metadata("x");
  REQUIRE(Digest(meta) != d);
}

TEST_CASE("leaves combine to the whole digest", "[digest]") {
  Segment s = Make(2 * kDigestChunk + 5);
  std::vector<Hash128> leaves;
  for (size_t i = 0; i < DigestLeafCount(s.bytes.size()); ++i) {
    leaves.push_back(HashLeaf(s.bytes.data(), s.bytes.size(), i));
  }
  REQUIRE(leaves.size() == 3);
  REQUIRE(CombineDigest(leaves, s.manifest) == Digest(s));
}

TEST_CASE("a leaf hashed in pieces, zeros among them, equals the leaf hashed whole", "[digest]") {
  // What Publish does: a chunk written from several storages, the layout's
  // padding between them left a hole that reads as zeros.
  Segment s = Make(2 * kDigestChunk + 5);
  for (size_t i = 1000; i < 1000 + 4096 + 17; ++i) s.bytes[i] = 0;                  // a gap
  for (size_t i = s.bytes.size() - 70000; i < s.bytes.size(); ++i) s.bytes[i] = 0;  // a padded end
  for (size_t leaf = 0; leaf < DigestLeafCount(s.bytes.size()); ++leaf) {
    const uint64_t begin = leaf * kDigestChunk;
    const uint64_t end = std::min<uint64_t>(begin + kDigestChunk, s.bytes.size());
    LeafHasher pieces;
    uint64_t at = begin;
    for (uint64_t step : {uint64_t{1}, uint64_t{999}, uint64_t{65536}, uint64_t{3} << 20}) {
      const uint64_t n = std::min(step, end - at);
      if (leaf == 0 && at == 1000) {  // the gap, as zeros
        pieces.UpdateZeros(4096 + 17);
        at += 4096 + 17;
        continue;
      }
      pieces.Update(s.bytes.data() + at, n);
      at += n;
    }
    const uint64_t zeros_from = std::clamp<uint64_t>(s.bytes.size() - 70000, at, end);
    pieces.Update(s.bytes.data() + at, zeros_from - at);
    pieces.UpdateZeros(end - zeros_from);
    INFO(leaf);
    REQUIRE(pieces.Finish() == HashLeaf(s.bytes.data(), s.bytes.size(), leaf));
  }
  // And different bytes, a different leaf.
  LeafHasher ones, zeros;
  const uint8_t one = 1;
  ones.Update(&one, 1);
  zeros.UpdateZeros(1);
  REQUIRE(ones.Finish() != zeros.Finish());
}

TEST_CASE("an empty model has a digest", "[digest]") {
  Manifest m;
  REQUIRE(AssignOffsets(&m).ok());
  REQUIRE(IsDigest(ComputeDigest(nullptr, 0, m)));
}

}  // namespace
}  // namespace zerocopy

namespace zerocopy {
namespace {

std::vector<Hash128> Leaves(const Segment& s) {
  std::vector<Hash128> leaves(DigestLeafCount(s.bytes.size()));
  for (size_t i = 0; i < leaves.size(); ++i) leaves[i] = HashLeaf(s.bytes.data(), s.bytes.size(), i);
  return leaves;
}

TEST_CASE("a leaf list round-trips and combines into the digest", "[digest]") {
  Segment s = Make(3 * kDigestChunk + 100);
  const std::vector<Hash128> leaves = Leaves(s);
  const std::string encoded = EncodeLeaves(leaves);
  REQUIRE(encoded.size() == 4 * kLeafBytes);
  auto decoded = DecodeLeaves(encoded, s.bytes.size());
  REQUIRE(decoded.ok());
  CHECK(*decoded == leaves);
  CHECK(CombineDigest(*decoded, s.manifest) == Digest(s));
  // The wrong number of leaves for the size is refused.
  CHECK(DecodeLeaves(encoded.substr(16), s.bytes.size()).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(DecodeLeaves(encoded, 2 * kDigestChunk).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("CheckLeaves accepts whole leaves that match and names the first that does not", "[digest]") {
  Segment s = Make(3 * kDigestChunk + 100);
  const uint64_t size = s.bytes.size();
  const std::vector<Hash128> leaves = Leaves(s);
  const uint8_t* b = s.bytes.data();
  CHECK(CheckLeaves(b, size, 0, size, leaves).ok());
  CHECK(CheckLeaves(b + kDigestChunk, 2 * kDigestChunk, kDigestChunk, size, leaves, 2).ok());
  CHECK(CheckLeaves(b + 3 * kDigestChunk, size - 3 * kDigestChunk, 3 * kDigestChunk, size, leaves)
            .ok());  // the short last
  CHECK(CheckLeaves(b, size, 0, size, EncodeLeaves(leaves)).ok());
  // Not whole leaves, past the end, the wrong leaf list: INVALID_ARGUMENT.
  CHECK(CheckLeaves(b + 1, kDigestChunk, 1, size, leaves).code() == absl::StatusCode::kInvalidArgument);
  CHECK(CheckLeaves(b, kDigestChunk - 1, 0, size, leaves).code() == absl::StatusCode::kInvalidArgument);
  CHECK(CheckLeaves(b, size, kDigestChunk, size, leaves).code() == absl::StatusCode::kInvalidArgument);
  CHECK(CheckLeaves(b, size, 0, size, std::vector<Hash128>(leaves.begin(), leaves.end() - 1)).code() ==
        absl::StatusCode::kInvalidArgument);
  // One byte changed in the third leaf: DATA_LOSS naming it, with 1 or 4 threads.
  std::vector<uint8_t> altered = s.bytes;
  altered[2 * kDigestChunk + 5] ^= 0x01;
  for (unsigned threads : {1u, 4u}) {
    absl::Status bad = CheckLeaves(altered.data(), size, 0, size, leaves, threads);
    CHECK(bad.code() == absl::StatusCode::kDataLoss);
    CHECK_THAT(std::string(bad.message()), Catch::Contains("leaf 2 of 4"));
  }
  CHECK(CheckLeaves(altered.data(), 2 * kDigestChunk, 0, size, leaves).ok());  // the range before it
}

}  // namespace
}  // namespace zerocopy
