// What the format tests share: the seed corpus they parse (tests/fuzz/
// corpus, written by tests/fuzz/make_seeds.py) and files read and written
// whole.
#pragma once

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>

#include <catch2/catch.hpp>

namespace zerocopy::testing {

inline const std::string kSeedCorpus = ZEROCOPY_SOURCE_DIR "/tests/fuzz/corpus/";

inline std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return std::string(std::istreambuf_iterator<char>(f), {});
}

inline void Spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

inline const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

}  // namespace zerocopy::testing
