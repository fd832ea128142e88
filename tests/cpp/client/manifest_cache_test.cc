// ManifestCache (client/cpp/src): a manifest parsed once per digest and
// bytes, parsed again whenever the bytes differ, bounded, errors named.
#include <catch2/catch.hpp>

#include "manifest_cache.h"
#include "support.h"

namespace zerocopy {
namespace {

TEST_CASE("the manifest cache parses each digest's bytes once and compares them every time", "[client][manifest]") {
  ManifestCache cache;
  v1::Manifest manifest = testing::MakeModel(3, 16, 1).source.manifest;
  const std::string digest(32, 'a');
  const std::string bytes = manifest.SerializeAsString();
  auto first = cache.Parse(digest, bytes);
  auto again = cache.Parse(digest, std::string(bytes));
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  CHECK(first->get() == again->get());
  CHECK((*first)->SerializeAsString() == bytes);
  CHECK(cache.parses() == 1);
  CHECK(cache.hits() == 1);

  // Other bytes under the same digest (never from a sound daemon, but not
  // assumed): parsed anew, and they replace the old.
  v1::Manifest changed = manifest;
  changed.set_metadata("other");
  auto other = cache.Parse(digest, changed.SerializeAsString());
  REQUIRE(other.ok());
  CHECK(other->get() != first->get());
  CHECK((*other)->metadata() == "other");
  CHECK((*first)->metadata().empty());  // the first one's holders keep theirs, unchanged
  CHECK(cache.parses() == 2);
  CHECK(cache.Parse(digest, changed.SerializeAsString())->get() == other->get());

  // Bytes that do not parse: DATA_LOSS naming the model.
  auto bad = cache.Parse(std::string(32, 'b'), std::string("\xff\xff\xff", 3));
  REQUIRE(absl::IsDataLoss(bad.status()));
  CHECK(bad.status().message().find(std::string(32, 'b')) != std::string::npos);
}

TEST_CASE("the manifest cache finds what it holds and lists the most recent first", "[client][manifest]") {
  ManifestCache cache;
  v1::Manifest manifest = testing::MakeModel(1, 16, 3).source.manifest;
  const std::string a(32, 'a'), b(32, 'b'), c(32, 'c');
  CHECK(cache.Find(a) == nullptr);
  CHECK(cache.Recent(8).empty());
  auto held = std::make_shared<const v1::Manifest>(manifest);
  cache.Insert(a, held);  // as MapSegment does, from the sealed file
  REQUIRE(cache.Parse(b, manifest.SerializeAsString()).ok());
  REQUIRE(cache.Parse(c, manifest.SerializeAsString()).ok());
  CHECK(cache.Recent(8) == std::vector<std::string>{c, b, a});
  CHECK(cache.Find(a).get() == held.get());
  CHECK(cache.Recent(2) == std::vector<std::string>{a, c});
  // Bytes arriving for a digest inserted without them: parsed, then kept.
  auto parsed = cache.Parse(a, manifest.SerializeAsString());
  REQUIRE(parsed.ok());
  CHECK(cache.Find(a).get() == parsed->get());
  CHECK(cache.Recent(8) == std::vector<std::string>{a, c, b});
}

TEST_CASE("the manifest cache keeps at most its bound and still answers past it", "[client][manifest]") {
  v1::Manifest manifest = testing::MakeModel(2, 16, 2).source.manifest;
  manifest.set_metadata(std::string(600, 'x'));
  const std::string bytes = manifest.SerializeAsString();
  ManifestCache cache(1000);  // room for one of them
  auto a = cache.Parse(std::string(32, '1'), bytes);
  auto b = cache.Parse(std::string(32, '2'), bytes);  // starts over
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(cache.Parse(std::string(32, '2'), bytes)->get() == b->get());
  CHECK(cache.Parse(std::string(32, '1'), bytes)->get() != a->get());  // dropped, parsed again
  CHECK(cache.Recent(8) == std::vector<std::string>{std::string(32, '1')});
  CHECK(cache.Find(std::string(32, '2')) == nullptr);
  ManifestCache tiny(10);  // larger than the bound: parsed, never kept
  auto big1 = tiny.Parse(std::string(32, '3'), bytes);
  auto big2 = tiny.Parse(std::string(32, '3'), bytes);
  REQUIRE(big1.ok());
  REQUIRE(big2.ok());
  CHECK(big1->get() != big2->get());
  CHECK(tiny.hits() == 0);
}

}  // namespace
}  // namespace zerocopy
