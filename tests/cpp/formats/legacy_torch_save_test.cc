// The legacy torch.save format (torch < 1.6, _use_new_zipfile_serialization
// =False): real files from tests/fuzz/make_seeds.py, and files built here
// byte by byte to break one rule each. Round trips against torch.load are
// in tests/python/test_formats.py.
#include "legacy_torch_save.h"

#include <fstream>
#include <iterator>
#include <cstring>
#include <map>
#include <vector>

#include <catch2/catch.hpp>

#include "seed_files.h"

#include "zerocopy/checkpoint.h"
#include "zerocopy/torch_save_file.h"

namespace zerocopy {
namespace {

using testing::Slurp;
using testing::U8;

// The float at `byte_offset` of legacy storage data, which is unaligned
// (read through memcpy: a float* there is undefined behaviour).
float FloatAt(const void* data, uint64_t byte_offset) {
  float v;
  std::memcpy(&v, static_cast<const uint8_t*>(data) + byte_offset, sizeof v);
  return v;
}

const std::string kSeeds = testing::kSeedCorpus + "torch_save/";

absl::StatusOr<TorchSaveFile> Parse(const std::string& bytes) { return TorchSaveFile::Parse(U8(bytes), bytes.size()); }

std::string Message(const absl::StatusOr<TorchSaveFile>& r) {
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(r.status().message());
}

std::string Le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}

// Protocol-2 pickles, written by hand.
std::string Str(const std::string& s) {
  return std::string("X") + static_cast<char>(s.size()) + std::string(3, '\0') + s;
}
const std::string kMagic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15);
const std::string kVersion("\x80\x02M\xe9\x03.", 6);  // 1001
const std::string kSysInfo = "\x80\x02}(" + Str("little_endian") + "\x88u.";

// {name: tensor of `size` floats over storage `key` of `numel` floats}.
std::string Object(const std::string& key, int numel, int size, const std::string& name = "w",
                   const std::string& storage_type = "FloatStorage") {
  return "\x80\x02}(" + Str(name) + "ctorch._utils\n_rebuild_tensor_v2\n((" + Str("storage") + "ctorch\n" +
         storage_type + "\n" + Str(key) + Str("cpu") + "K" + static_cast<char>(numel) + "NtQK" + std::string(1, '\0') +
         "K" + static_cast<char>(size) + "\x85K\x01\x85\x89" + "ccollections\nOrderedDict\n)RtRu.";
}

std::string Keys(const std::vector<std::string>& keys) {
  std::string p = "\x80\x02](";
  for (const auto& k : keys) p += Str(k);
  return p + "e.";
}

// `count` then that many floats 0, 1, 2, ...
std::string Floats(uint64_t count) {
  std::string out = Le64(count);
  for (uint64_t i = 0; i < count; ++i) {
    float f = static_cast<float>(i);
    out.append(reinterpret_cast<const char*>(&f), sizeof f);
  }
  return out;
}

std::string Legacy(const std::string& object, const std::string& keys, const std::string& data) {
  return kMagic + kVersion + kSysInfo + object + keys + data;
}

TEST_CASE("a legacy file built by hand reads as torch.load reads it", "[legacy]") {
  const std::string bytes = Legacy(Object("k", 4, 3), Keys({"k"}), Floats(4));
  auto file = Parse(bytes);
  REQUIRE(file.ok());
  const auto& m = file->source().manifest;
  REQUIRE(m.tensors_size() == 1);
  CHECK(m.tensors(0).name() == "w");
  CHECK(m.tensors(0).dtype() == v1::F32);
  CHECK(m.tensors(0).shape(0) == 3);
  REQUIRE(m.storages_size() == 1);
  CHECK(m.storages(0).size() == 16);
  // The storage is the file's bytes after the element count, unaligned.
  CHECK(file->source().storage_data[0] == U8(bytes) + bytes.size() - 16);
  CHECK(FloatAt(file->source().storage_data[0], 0) == 0.0f);
}

TEST_CASE("legacy files from torch read, whatever their dtypes and pickle protocol", "[legacy]") {
  // legacy_nested's ties, views and metadata: checkpoint_test.cc, beside its zip twin.
  for (const char* seed : {"legacy_state_dict", "legacy_dtypes", "legacy_protocol4"}) {
    INFO(seed);
    std::string bytes = Slurp(kSeeds + seed);
    auto file = Parse(bytes);
    REQUIRE(file.ok());
    CHECK(file->source().manifest.tensors_size() >= 2);
  }
}

TEST_CASE("a legacy storage view is its root storage, further in", "[legacy]") {
  // make_seeds.py legacy_views: 'root' of 8 floats 0..7, view ('view', 2, 4).
  std::string bytes = Slurp(kSeeds + "legacy_views");
  auto file = Parse(bytes);
  REQUIRE(file.ok());
  const auto& m = file->source().manifest;
  REQUIRE(m.storages_size() == 1);
  CHECK(m.storages(0).size() == 32);
  std::map<std::string, const v1::Tensor*> by_name;
  for (const auto& t : m.tensors()) by_name[t.name()] = &t;
  CHECK(by_name.at("whole")->byte_offset() == 0);
  CHECK(by_name.at("part")->byte_offset() == 3 * sizeof(float));
  CHECK(by_name.at("part_again")->byte_offset() == 2 * sizeof(float));
  CHECK(FloatAt(file->source().storage_data[0], by_name.at("part")->byte_offset()) == 3.0f);
}

TEST_CASE("legacy files are detected as torch.save files", "[legacy]") {
  std::string bytes = Slurp(kSeeds + "legacy_state_dict");
  CHECK(internal::LegacyTorchMagicEnd(U8(bytes), bytes.size()) == size_t{15});
  std::string p4 = Slurp(kSeeds + "legacy_protocol4");
  CHECK(internal::LegacyTorchMagicEnd(U8(p4), p4.size()).has_value());
  CHECK(*DetectCheckpointFormat(kSeeds + "legacy_state_dict") == CheckpointFormat::kTorch);
  auto read = ReadNativeCheckpoint(kSeeds + "legacy_state_dict", CheckpointFormat::kTorch);
  REQUIRE(read.ok());
  CHECK(read->source.manifest.tensors_size() == 2);
}

TEST_CASE("a legacy file with a bad magic number or protocol version is refused", "[legacy]") {
  std::string bad = Legacy(Object("k", 4, 4), Keys({"k"}), Floats(4));
  bad[5] ^= 1;
  CHECK_THAT(Message(Parse(bad)), Catch::Contains("nor a legacy torch.save file"));
  CHECK_FALSE(internal::LegacyTorchMagicEnd(U8(bad), bad.size()).has_value());
  auto direct = internal::ReadLegacyTorchSave(U8(bad), bad.size());
  REQUIRE_FALSE(direct.ok());
  CHECK_THAT(std::string(direct.status().message()), Catch::Contains("magic number"));
  std::string version =
      kMagic + std::string("\x80\x02M\xea\x03.", 6) + kSysInfo + Object("k", 4, 4) + Keys({"k"}) + Floats(4);
  CHECK_THAT(Message(Parse(version)), Catch::Contains("holds 1002, not 1001"));
  std::string sys_info = kMagic + kVersion + "\x80\x02K\x01." + Object("k", 4, 4) + Keys({"k"}) + Floats(4);
  CHECK_THAT(Message(Parse(sys_info)), Catch::Contains("sys_info pickle holds a int, not a dict"));
}

TEST_CASE("a truncated legacy file is refused, naming what it lacks", "[legacy]") {
  // Every truncation of a real one: checkpoint_test.cc.
  const std::string whole = Legacy(Object("k", 4, 4), Keys({"k"}), Floats(4));
  CHECK_THAT(Message(Parse(whole.substr(0, whole.size() - 1))),
             Catch::Contains("storage k (1 of 1) needs 16 bytes from byte") && Catch::Contains("truncated?"));
  CHECK_THAT(Message(Parse(whole.substr(0, whole.size() - 20))),
             Catch::Contains("storage k (1 of 1) has no element count"));
  const std::string pickles = kMagic + kVersion + kSysInfo + Object("k", 4, 4);
  CHECK_THAT(Message(Parse(pickles.substr(0, pickles.size() - 3))),
             Catch::Contains("the object pickle ends at byte") && Catch::Contains("before its STOP"));
}

TEST_CASE("a legacy file's pickles are bounded in bytes, not only in objects", "[legacy]") {
  // One string of 65 MiB in the object pickle: past the 64 MiB budget
  // (strings are copied), refused where it starts.
  const uint32_t n = 65u << 20;
  std::string big = "\x80\x02X" + Le64(n).substr(0, 4) + std::string(n, 'a') + ".";
  const size_t at = kMagic.size() + kVersion.size() + kSysInfo.size() + 2;
  CHECK_THAT(Message(Parse(Legacy(big, Keys({}), ""))),
             Catch::Contains("the object pickle at byte " + std::to_string(at) +
                             " (opcode 0x58): runs past byte 67108864, "
                             "over the budget of 67108864 bytes of pickle"));
}

TEST_CASE("a legacy storage whose element count is not the pickle's numel is refused", "[legacy]") {
  std::string data = Floats(5);
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4), Keys({"k"}), data))),
             Catch::Contains("storage k (1 of 1, byte ") &&
                 Catch::Contains("holds 5 elements of f32 but the object pickle declares 4"));
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 5), Keys({"k"}), Floats(4)))),
             Catch::Contains("a tensor reaches element 4 of f32 in a storage of 16 bytes"));
  // A huge count: no overflow, no read past the end.
  std::string huge = Le64(~uint64_t{0}) + std::string(16, '\0');
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4), Keys({"k"}), huge))),
             Catch::Contains("holds 18446744073709551615 elements"));
}

TEST_CASE("a legacy storage list must name each storage of the object once", "[legacy]") {
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4), Keys({}), Floats(4)))),
             Catch::Contains("storage k is used by the object pickle but missing from the storage key list"));
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4), Keys({"k", "other"}), Floats(4) + Floats(4)))),
             Catch::Contains("names storage other, which the object does not use"));
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4), Keys({"k", "k"}), Floats(4) + Floats(4)))),
             Catch::Contains("names storage k twice"));
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4), "\x80\x02K\x01.", Floats(4)))),
             Catch::Contains("storage key pickle (byte ") && Catch::Contains("holds a int, not a list"));
}

TEST_CASE("a legacy object pickle may name only what a state dict needs", "[legacy]") {
  // os.system("id") as the object: refused where it stands, nothing run.
  const std::string evil = std::string(
                               "\x80\x02"
                               "cos\nsystem\n",
                               13) +
                           Str("id") + "\x85R.";
  const size_t at = kMagic.size() + kVersion.size() + kSysInfo.size() + 2;
  CHECK_THAT(Message(Parse(Legacy(evil, Keys({}), ""))),
             Catch::Contains("the object pickle at byte " + std::to_string(at) + " (opcode 0x63)") &&
                 Catch::Contains("os.system"));
  CHECK_THAT(Message(Parse(Legacy(Object("k", 4, 4, "w", "NotAStorage"), Keys({"k"}), Floats(4)))),
             Catch::Contains("torch.NotAStorage"));
  // The zip format's five-element persistent id is not the legacy one.
  std::string five = Object("k", 4, 4);
  five.erase(five.find("NtQ"), 1);
  CHECK_THAT(Message(Parse(Legacy(five, Keys({"k"}), Floats(4)))),
             Catch::Contains("persistent id is not ('storage', type, key, location, numel, view)"));
  // Persistent ids belong in the object pickle alone.
  CHECK_THAT(Message(Parse(kMagic + kVersion + "\x80\x02(" + Str("x") + "tQ." + Object("k", 4, 4))),
             Catch::Contains("the sys_info pickle at byte") &&
                 Catch::Contains("a persistent id in a pickle that may hold none"));
}

TEST_CASE("legacy storage views must lie inside their storage and mean one thing", "[legacy]") {
  auto with_view = [](const std::string& view) {
    std::string object = Object("k", 4, 1);
    object.replace(object.find("NtQ"), 1, "(" + Str("v") + view + "t");
    return Legacy(object, Keys({"k"}), Floats(4));
  };
  REQUIRE(Parse(with_view("K\x02K\x02")).ok());
  CHECK_THAT(Message(Parse(with_view("K\x03K\x02"))),
             Catch::Contains("storage view v covers elements 3 to 3+2 of storage k, which has 4"));
  CHECK_THAT(Message(Parse(with_view(Str("x") + "K\x02"))),
             Catch::Contains("a storage view is not (key, offset, numel)"));
  std::string object = Object("k", 4, 1);
  object.replace(object.find("NtQ"), 1, "(" + Str("k") + std::string("K\x00K\x01t", 5));
  CHECK_THAT(Message(Parse(Legacy(object, Keys({"k"}), Floats(4)))),
             Catch::Contains("storage k is both a storage and a view"));
}

}  // namespace
}  // namespace zerocopy
