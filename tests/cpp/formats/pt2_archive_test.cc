// The torch.export archive reader (formats/pt2_archive.h) over real
// archives (tests/fuzz/make_seeds.py writes them with torch.export.save).
// Round trips against torch itself and the refusals, each on an archive
// torch wrote and one change to it, are in tests/python/test_export.py.
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include <catch2/catch.hpp>

#include "seed_files.h"
#include "support.h"
#include "zerocopy/checkpoint.h"
#include "zerocopy/manifest.h"
#include "zerocopy/pt2_archive.h"

namespace zerocopy {
namespace {

using testing::Slurp;
using testing::U8;

const std::string kSeeds = testing::kSeedCorpus + "pt2/";

TEST_CASE("a torch.export archive: weights and constants are tensors, the rest of it files", "[pt2]") {
  // _Exported in make_seeds.py: fc (Linear 4->3), emb (5x4) tied to head,
  // buffers scale (f16) and steps (i64), a tensor constant const.
  const std::string bytes = Slurp(kSeeds + "exported");
  auto checkpoint = ParsePt2Archive(U8(bytes), bytes.size());
  REQUIRE(checkpoint.ok());
  const auto& m = checkpoint->source.manifest;
  CHECK(m.format() == "torch-export");
  REQUIRE(ValidateManifest(m).ok());
  std::map<std::string, const v1::Tensor*> tensors;
  for (const auto& t : m.tensors()) tensors[t.name()] = &t;
  REQUIRE(tensors.size() == 7);
  CHECK(tensors.at("emb.weight")->storage() == tensors.at("head.weight")->storage());  // tied: one record
  CHECK(tensors.at("fc.weight")->dtype() == v1::F32);
  CHECK(tensors.at("scale")->dtype() == v1::F16);
  CHECK(tensors.at("steps")->dtype() == v1::I64);
  REQUIRE(tensors.at("fc.weight")->shape_size() == 2);
  CHECK(tensors.at("fc.weight")->shape(0) == 3);
  CHECK(tensors.at("fc.weight")->shape(1) == 4);
  CHECK(tensors.count("const"));
  // Storages point into the archive's bytes: the records themselves.
  for (int i = 0; i < m.storages_size(); ++i) {
    auto* p = static_cast<const uint8_t*>(checkpoint->source.storage_data[static_cast<size_t>(i)]);
    CHECK(p >= U8(bytes));
    CHECK(p + m.storages(i).size() <= U8(bytes) + bytes.size());
  }
  std::map<std::string, uint64_t> files;
  for (const auto& f : m.files()) files[f.name()] = m.storages(static_cast<int>(f.storage())).size();
  for (const char* kept :
       {"models/model.json", "data/weights/model_weights_config.json", "data/constants/model_constants_config.json",
        "data/sample_inputs/model.pt", "archive_format", "archive_version"}) {
    INFO(kept);
    CHECK(files.count(kept));
  }
  CHECK_FALSE(files.count("data/weights/weight_0"));  // a tensor's record is not also a file
  CHECK(files.at("archive_format") == 3);
}

TEST_CASE("an AOTInductor package: its weight records are tensors in place, its library a file", "[pt2]") {
  // make_seeds.py's aoti: fc.weight (2x3) and tied.weight (3, from element
  // 3) over one torch.save record, fc.bias over another.
  const std::string bytes = Slurp(kSeeds + "aoti");
  auto checkpoint = ParsePt2Archive(U8(bytes), bytes.size());
  REQUIRE(checkpoint.ok());
  const auto& m = checkpoint->source.manifest;
  CHECK(m.format() == "aoti");
  REQUIRE(ValidateManifest(m).ok());
  std::map<std::string, const v1::Tensor*> tensors;
  for (const auto& t : m.tensors()) tensors[t.name()] = &t;
  REQUIRE(tensors.size() == 3);
  CHECK(tensors.at("fc.weight")->storage() == tensors.at("tied.weight")->storage());
  CHECK(tensors.at("tied.weight")->byte_offset() == 12);
  // The record's tensor bytes, in place in the archive (at any alignment:
  // Publish copies them into the segment's aligned storages).
  const auto* weight = static_cast<const uint8_t*>(checkpoint->source.storage_data[tensors.at("fc.weight")->storage()]);
  float sixth;
  std::memcpy(&sixth, weight + 5 * sizeof(float), sizeof sixth);
  CHECK(sixth == 5.0f);
  CHECK(weight > U8(bytes));
  CHECK(weight < U8(bytes) + bytes.size());
  std::set<std::string> files;
  for (const auto& f : m.files()) files.insert(f.name());
  CHECK(files.count("data/aotinductor/model/m.wrapper.so"));
  CHECK(files.count("data/aotinductor/model/weights_config.json"));
  CHECK_FALSE(files.count("data/weights/weight_0"));
}

TEST_CASE("torch.export archives are detected from their entries", "[pt2]") {
  testing::TempDir dir;
  const std::string path = dir.path() + "/program";  // no .pt2 suffix: the content decides
  {
    std::ofstream f(path, std::ios::binary);
    f << Slurp(kSeeds + "linear");
  }
  CHECK(*DetectCheckpointFormat(path) == CheckpointFormat::kTorchExport);
  CHECK(*ParseCheckpointFormat("torch-export") == CheckpointFormat::kTorchExport);
  auto checkpoint = ReadNativeCheckpoint(path, CheckpointFormat::kTorchExport);
  REQUIRE(checkpoint.ok());
  REQUIRE(checkpoint->source.manifest.tensors_size() == 2);
  CHECK(checkpoint->source.manifest.tensors(0).dtype() == v1::BF16);
}

TEST_CASE("every truncation of a torch.export archive is refused", "[pt2]") {
  const std::string bytes = Slurp(kSeeds + "linear");
  REQUIRE(ParsePt2Archive(U8(bytes), bytes.size()).ok());
  for (size_t n = 0; n < bytes.size(); n += 7) {
    std::string cut = bytes.substr(0, n);  // its own allocation: ASan sees reads past it
    auto r = ParsePt2Archive(U8(cut), cut.size());
    INFO(n);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("single-byte corruptions of a torch.export archive are refused or read within its bytes", "[pt2]") {
  const std::string bytes = Slurp(kSeeds + "exported");
  int refused = 0;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    auto r = ParsePt2Archive(U8(bad), bad.size());
    if (!r.ok()) {
      ++refused;
      CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
      continue;
    }
    const auto& m = r->source.manifest;
    for (int s = 0; s < m.storages_size(); ++s) {
      auto* p = static_cast<const uint8_t*>(r->source.storage_data[static_cast<size_t>(s)]);
      REQUIRE(p >= U8(bad));
      REQUIRE(p + m.storages(s).size() <= U8(bad) + bad.size());
    }
  }
  CHECK(refused > 0);
}

}  // namespace
}  // namespace zerocopy
