// The zip central directory reader (torch.save and TorchScript archives).
#include "zerocopy/zip_directory.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include <catch2/catch.hpp>

#include "seed_files.h"

namespace zerocopy {
namespace {

using testing::Slurp;
using testing::U8;

const std::string kSeeds = testing::kSeedCorpus;

TEST_CASE("the zip directory: entries, spans and truncation", "[zip]") {
  std::string bytes = Slurp(kSeeds + "torch_save/parameters");
  auto entries = ReadZipDirectory(U8(bytes), bytes.size());
  REQUIRE(entries.ok());
  bool pickle = false;
  for (const auto& e : *entries) {
    CHECK(e.method == 0);
    CHECK(e.data_offset + e.size <= bytes.size());
    pickle = pickle || e.name.find("/data.pkl") != std::string::npos;
  }
  CHECK(pickle);
  CHECK_FALSE(ReadZipDirectory(U8(bytes), 10).ok());
  std::string no_end = bytes.substr(0, bytes.size() - 22);
  auto r = ReadZipDirectory(U8(no_end), no_end.size());
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("end-of-directory"));
}

TEST_CASE("an entry whose bytes would lie past the archive is refused", "[zip]") {
  std::string bytes = Slurp(kSeeds + "torch_save/parameters");
  // The first central directory entry ("PK\1\2"): its compressed size
  // (offset 20) made larger than the archive.
  const size_t central = bytes.find(std::string("PK\x01\x02", 4));
  REQUIRE(central != std::string::npos);
  std::string bad = bytes;
  const uint32_t huge = 0x7fffffff;
  std::memcpy(&bad[central + 20], &huge, 4);
  auto r = ReadZipDirectory(U8(bad), bad.size());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("every truncation of an archive's directory is refused", "[zip]") {
  std::string bytes = Slurp(kSeeds + "torch_save/parameters");
  const size_t central = bytes.find(std::string("PK\x01\x02", 4));
  for (size_t n = central; n < bytes.size(); ++n) {
    std::string cut = bytes.substr(0, n);  // its own allocation: ASan sees reads past it
    INFO(n);
    CHECK_FALSE(ReadZipDirectory(U8(cut), cut.size()).ok());
  }
}

}  // namespace
}  // namespace zerocopy
