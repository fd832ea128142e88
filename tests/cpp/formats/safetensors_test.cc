// The safetensors reader: valid files parse into views of their bytes;
// every malformed file is an INVALID_ARGUMENT naming the rule, never a
// crash or a read outside the buffer.
#include <cstring>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "support.h"
#include "zerocopy/manifest.h"
#include "zerocopy/safetensors_file.h"

namespace zerocopy {
namespace {

std::vector<uint8_t> File(const std::string& header, size_t data_bytes, uint64_t declared_length = 0) {
  uint64_t n = declared_length ? declared_length : header.size();
  std::vector<uint8_t> bytes(8 + header.size() + data_bytes);
  std::memcpy(bytes.data(), &n, 8);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) bytes[8 + header.size() + i] = static_cast<uint8_t>(i);
  return bytes;
}

absl::Status ParseStatus(const std::vector<uint8_t>& bytes) {
  return SafetensorsFile::Parse(bytes.data(), bytes.size()).status();
}

TEST_CASE("a valid safetensors file parses", "[safetensors]") {
  auto bytes = File(R"({"b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},)"
                    R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                    R"("__metadata__":{"format":"pt"}})",
                    20);
  auto file = SafetensorsFile::Parse(bytes.data(), bytes.size());
  REQUIRE(file.ok());
  REQUIRE(file->tensors().size() == 2);
  const auto& a = file->tensors()[0];
  REQUIRE(a.name == "a");
  REQUIRE(a.shape == std::vector<int64_t>{2, 2});
  REQUIRE(a.size == 16);
  REQUIRE(a.data[0] == 0);
  REQUIRE(file->tensors()[1].data[0] == 16);
  REQUIRE(file->metadata().at("format") == "pt");
  ModelSource source = file->ToModelSource();
  REQUIRE(source.manifest.tensors_size() == 2);
  REQUIRE(source.manifest.format() == "safetensors");
  REQUIRE(ValidateManifest(source.manifest).ok());
}

TEST_CASE("malformed safetensors files are refused", "[safetensors]") {
  const std::string ok_tensor = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    const char* what;
    std::vector<uint8_t> bytes;
  };
  std::vector<Case> cases = {
      {"empty file", {}},
      {"shorter than the length prefix", {1, 2, 3}},
      {"header length beyond the file", File("{" + ok_tensor + "}", 8, 1000)},
      {"header length near 2^64", File("{" + ok_tensor + "}", 8, ~0ull - 4)},
      {"not JSON", File("{not json", 8)},
      {"JSON array", File("[1,2]", 0)},
      {"unknown dtype", File(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8)},
      {"negative dimension", File(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)},
      {"offsets past the data", File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4)},
      {"end before begin", File(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8)},
      {"size differs from the shape", File(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)},
      {"overlapping tensors", File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                   12)},
      {"shape product overflows",
       File(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8)},
      {"offsets as strings", File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}})", 8)},
      {"missing data_offsets", File(R"({"a":{"dtype":"F32","shape":[2]}})", 8)},
      {"deeply nested JSON", File(std::string(5000, '[') + std::string(5000, ']'), 0)},
      {"metadata that is not strings", File(R"({"__metadata__":{"k":[1]}})", 0)},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto status = ParseStatus(c.bytes);
    INFO(status.ToString());
    REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
    REQUIRE_FALSE(status.message().empty());
  }
}

TEST_CASE("every truncation of a valid file is refused", "[safetensors]") {
  auto bytes = File(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  for (size_t n = 0; n < bytes.size(); ++n) {
    INFO(n);
    REQUIRE_FALSE(SafetensorsFile::Parse(bytes.data(), n).ok());
  }
  REQUIRE(SafetensorsFile::Parse(bytes.data(), bytes.size()).ok());
}

TEST_CASE("opening a file that does not exist says so", "[safetensors]") {
  auto file = SafetensorsFile::Open("/nonexistent/model.safetensors");
  REQUIRE(file.status().code() == absl::StatusCode::kNotFound);
  REQUIRE_THAT(std::string(file.status().message()), Catch::Contains("/nonexistent/model.safetensors"));
}

TEST_CASE("a file written by the test helper round-trips", "[safetensors]") {
  testing::TempDir dir;
  auto model = testing::MakeModel(3, 100, 7);
  testing::WriteSafetensors(model, dir.path() + "/m.safetensors");
  auto file = SafetensorsFile::Open(dir.path() + "/m.safetensors");
  REQUIRE(file.ok());
  REQUIRE(file->tensors().size() == 3);
  for (const auto& e : file->tensors()) {
    int index = std::stoi(e.name.substr(6));
    REQUIRE(std::memcmp(e.data, model.buffers[static_cast<size_t>(index)].data(), e.size) == 0);
  }
}

}  // namespace
}  // namespace zerocopy
