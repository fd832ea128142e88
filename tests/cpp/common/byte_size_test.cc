// Byte sizes as the daemon's configuration and the CLI write and read them.
#include <catch2/catch.hpp>

#include "zerocopy/byte_size.h"

namespace zerocopy {
namespace {

TEST_CASE("byte sizes parse with units", "[byte_size]") {
  REQUIRE(*ParseByteSize("4096") == 4096);
  REQUIRE(*ParseByteSize("8G") == 8ull << 30);
  REQUIRE(*ParseByteSize("8g") == 8ull << 30);
  REQUIRE(*ParseByteSize("512MiB") == 512ull << 20);
  REQUIRE(*ParseByteSize("512MB") == 512ull << 20);
  REQUIRE(*ParseByteSize("1.5T") == 3ull << 39);
  REQUIRE(*ParseByteSize(" 64K ") == 64ull << 10);
  uint64_t half = *ParseByteSize("50%");
  uint64_t all = *ParseByteSize("100%");
  REQUIRE(half > 0);
  REQUIRE(all / 2 == half);
  for (const char* bad : {"", "G", "-1G", "8X", "0%", "101%", "1e30", "99999999999T", "8 G B"}) {
    INFO(bad);
    REQUIRE(ParseByteSize(bad).status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("byte sizes print in binary units with the decimals asked for", "[byte_size]") {
  CHECK(FormatBytes(512) == "512 B");
  CHECK(FormatBytes(1536) == "1.50 KiB");
  CHECK(FormatBytes(3ull << 30) == "3.00 GiB");
  CHECK(FormatBytes(3ull << 30, 1) == "3.0 GiB");
  CHECK(FormatBytes(5ull << 50, 0) == "5 PiB");
}

}  // namespace
}  // namespace zerocopy
