// The checkpoint readers that need no LibTorch: format detection,
// torch.save archives and shard indexes. End-to-end round trips against torch itself are in
// tests/python/test_formats.py.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "seed_files.h"
#include "support.h"
#include "zerocopy/checkpoint.h"
#include "zerocopy/manifest.h"
#include "zerocopy/torch_save_file.h"

namespace zerocopy {
namespace {

using testing::Slurp;
using testing::Spit;
using testing::U8;

using testing::TempDir;

const std::string kSeeds = testing::kSeedCorpus;

TEST_CASE("a torch.save file flattens to dotted names, ties and metadata", "[checkpoint]") {
  // {"model": {"w", "w_tied", "w_t", "row"}, "epoch": 3, "cfg": {...}, "none": None, "opt": {0: {"step"}}}
  // in a zip archive and in the legacy format.
  const std::string seed = GENERATE(as<std::string>(), "nested", "legacy_nested");
  INFO(seed);
  std::string bytes = Slurp(kSeeds + "torch_save/" + seed);
  auto file = TorchSaveFile::Parse(U8(bytes), bytes.size());
  REQUIRE(file.ok());
  const auto& m = file->source().manifest;
  CHECK(m.format() == "torch");
  std::map<std::string, const v1::Tensor*> by_name;
  for (const auto& t : m.tensors()) by_name[t.name()] = &t;
  REQUIRE(by_name.size() == 5);
  for (const char* n : {"model.w", "model.w_tied", "model.w_t", "model.row", "opt.0.step"}) {
    INFO(n);
    CHECK(by_name.count(n));
  }
  CHECK(m.storages_size() == 2);  // base (shared by four views) and step
  CHECK(by_name["model.w"]->storage() == by_name["model.w_tied"]->storage());
  CHECK(by_name["model.w"]->storage() == by_name["model.row"]->storage());
  REQUIRE(by_name["model.w_t"]->strides().size() == 2);
  CHECK(by_name["model.w_t"]->strides(0) == 1);
  CHECK(by_name["model.w_t"]->strides(1) == 4);
  CHECK(by_name["model.row"]->byte_offset() == 4 * sizeof(float));
  auto meta = nlohmann::json::parse(m.metadata());
  CHECK(meta["epoch"] == 3);
  CHECK(meta["cfg"]["lr"] == 0.1);
  CHECK(meta["none"].is_null());
  // Storage pointers lie inside the input (zero-copy from the file).
  for (int i = 0; i < m.storages_size(); ++i) {
    auto* p = static_cast<const uint8_t*>(file->source().storage_data[i]);
    CHECK(p >= U8(bytes));
    CHECK(p + m.storages(i).size() <= U8(bytes) + bytes.size());
  }
}

TEST_CASE("a torch.save of one tensor reads as that tensor, and only where one is asked for", "[checkpoint]") {
  const std::string bare = Slurp(kSeeds + "torch_save/bare_tensor");  // torch.arange(6.0).view(2, 3)
  auto file = TorchSaveFile::ParseTensor(U8(bare), bare.size());
  REQUIRE(file.ok());
  const auto& m = file->source().manifest;
  REQUIRE(m.tensors_size() == 1);
  CHECK(m.tensors(0).name() == "tensor");
  CHECK(m.tensors(0).dtype() == v1::F32);
  REQUIRE(m.tensors(0).shape_size() == 2);
  CHECK(m.storages(0).size() == 24);
  float sixth;  // in place, in the file's bytes (aligned or not)
  std::memcpy(&sixth, static_cast<const uint8_t*>(file->source().storage_data[0]) + 5 * sizeof(float), sizeof sixth);
  CHECK(sixth == 5.0f);
  auto as_state_dict = TorchSaveFile::Parse(U8(bare), bare.size());
  REQUIRE_FALSE(as_state_dict.ok());
  CHECK_THAT(std::string(as_state_dict.status().message()), Catch::Contains("not a dict of tensors"));
  const std::string state = Slurp(kSeeds + "torch_save/state_dict");
  auto as_tensor = TorchSaveFile::ParseTensor(U8(state), state.size());
  REQUIRE_FALSE(as_tensor.ok());
  CHECK_THAT(std::string(as_tensor.status().message()), Catch::Contains("not a tensor"));
}

TEST_CASE("every truncation of a torch.save file is refused", "[checkpoint]") {
  const std::string seed = GENERATE(as<std::string>(), "state_dict", "legacy_nested");
  INFO(seed);
  std::string bytes = Slurp(kSeeds + "torch_save/" + seed);
  REQUIRE(TorchSaveFile::Parse(U8(bytes), bytes.size()).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::string cut = bytes.substr(0, n);  // its own allocation: ASan sees reads past it
    auto r = TorchSaveFile::Parse(U8(cut), cut.size());
    INFO(n);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("every single-byte corruption of a torch.save file is refused or still valid", "[checkpoint]") {
  const std::string seed = GENERATE(as<std::string>(), "nested", "legacy_nested", "legacy_views");
  INFO(seed);
  std::string bytes = Slurp(kSeeds + "torch_save/" + seed);
  int refused = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    auto r = TorchSaveFile::Parse(U8(bad), bad.size());
    if (!r.ok()) {
      ++refused;
      CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    }
  }
  CHECK(refused > 0);
}

TEST_CASE("hostile pickles describing huge object graphs are refused quickly", "[checkpoint]") {
  // tests/cpp/data/hostile/make.py writes them.
  for (const char* name : {"dag_metadata.pt", "dag_tensors.pt", "many_objects.pt"}) {
    INFO(name);
    std::string bytes = Slurp(std::string(ZEROCOPY_SOURCE_DIR "/tests/cpp/data/hostile/") + name);
    auto start = std::chrono::steady_clock::now();
    auto r = TorchSaveFile::Parse(U8(bytes), bytes.size());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));  // not exponential
    INFO(r.status().message());
  }
}

TEST_CASE("formats are detected from the content", "[checkpoint]") {
  TempDir dir;
  const std::string d = dir.path();
  Spit(d + "/a.pt", Slurp(kSeeds + "torch_save/state_dict"));
  Spit(d + "/b.bin", Slurp(kSeeds + "safetensors/small"));  // a safetensors file with another suffix
  Spit(d + "/legacy.pt", Slurp(kSeeds + "torch_save/legacy_state_dict"));
  Spit(d + "/junk", "this is not a model at all");
  CHECK(*DetectCheckpointFormat(d + "/a.pt") == CheckpointFormat::kTorch);
  CHECK(*DetectCheckpointFormat(d + "/b.bin") == CheckpointFormat::kSafetensors);
  CHECK(*DetectCheckpointFormat(d + "/legacy.pt") == CheckpointFormat::kTorch);
  CHECK_FALSE(DetectCheckpointFormat(d + "/junk").ok());
  CHECK(DetectCheckpointFormat(d + "/missing").status().code() == absl::StatusCode::kNotFound);
  auto several = DetectCheckpointFormat(d);
  REQUIRE_FALSE(several.ok());
  CHECK_THAT(std::string(several.status().message()), Catch::Contains("several checkpoint files"));
  TempDir empty;
  CHECK_THAT(std::string(DetectCheckpointFormat(empty.path()).status().message()),
             Catch::Contains("holds no checkpoint"));
  CHECK_FALSE(ParseCheckpointFormat("pickle").ok());
  CHECK(*ParseCheckpointFormat("torchscript") == CheckpointFormat::kTorchScript);
}

TEST_CASE("shard indexes: names, traversal and shape", "[checkpoint]") {
  auto ok = ParseShardIndex(R"({"metadata": {"total_size": 8},
      "weight_map": {"b": "s2.safetensors", "a": "s1.safetensors", "c": "s1.safetensors"}})");
  REQUIRE(ok.ok());
  CHECK(ok->shards == std::vector<std::string>{"s1.safetensors", "s2.safetensors"});
  CHECK(ok->weight_map.front().first == "a");
  CHECK(ok->metadata_json == R"({"total_size":8})");
  for (const char* bad :
       {R"({"weight_map": {"a": "../x"}})", R"({"weight_map": {"a": "/etc/passwd"}})", R"({"weight_map": {"a": ".."}})",
        R"({"weight_map": {"a": ""}})", R"({"weight_map": {"a": 3}})", R"({"weight_map": {}})", R"({"metadata": {}})",
        R"([1, 2])", R"({"weight_map": {"a": "x"}, "metadata": 5})", "{\"weight_map\": "}) {
    INFO(bad);
    CHECK(ParseShardIndex(bad).status().code() == absl::StatusCode::kInvalidArgument);
  }
  std::string deep(100000, '[');
  CHECK_THAT(std::string(ParseShardIndex(deep).status().message()), Catch::Contains("nested too deeply"));
}

TEST_CASE("a sharded checkpoint reads as one model, and a missing shard is named", "[checkpoint]") {
  TempDir dir;
  const std::string d = dir.path();
  auto a = testing::MakeModel(2, 16, 1);
  auto b = testing::MakeModel(1, 8, 2);
  // Tensor names from MakeModel collide across models: rename b's.
  b.source.manifest.mutable_tensors(0)->set_name("other.weight");
  testing::WriteSafetensors(a, d + "/s1.safetensors");
  testing::WriteSafetensors(b, d + "/s2.safetensors");
  nlohmann::json index = {{"weight_map", nlohmann::json::object()}};
  for (const auto& t : a.source.manifest.tensors()) index["weight_map"][t.name()] = "s1.safetensors";
  index["weight_map"]["other.weight"] = "s2.safetensors";
  Spit(d + "/model.safetensors.index.json", index.dump());
  CHECK(*DetectCheckpointFormat(d) == CheckpointFormat::kShardedSafetensors);
  auto ckpt = ReadNativeCheckpoint(d, CheckpointFormat::kShardedSafetensors);
  REQUIRE(ckpt.ok());
  CHECK(ckpt->source.manifest.tensors_size() == 3);
  CHECK(ckpt->source.manifest.format() == "safetensors-sharded");
  ::unlink((d + "/s2.safetensors").c_str());
  auto missing = ReadNativeCheckpoint(d, CheckpointFormat::kShardedSafetensors);
  REQUIRE(missing.status().code() == absl::StatusCode::kNotFound);
  CHECK_THAT(std::string(missing.status().message()), Catch::Contains("s2.safetensors"));
}

TEST_CASE("a model directory keeps its small files and leaves weights, documents and subdirectories out",
          "[checkpoint]") {
  TempDir dir;
  const std::string d = dir.path();
  auto model = testing::MakeModel(2, 16, 1);
  testing::WriteSafetensors(model, d + "/model.safetensors");
  Spit(d + "/config.json", R"({"architectures": ["LlamaForCausalLM"]})");
  Spit(d + "/tokenizer.json", "{}");
  Spit(d + "/pytorch_model.bin", "weights we do not read");
  Spit(d + "/README.md", "# a model card");
  Spit(d + "/.gitattributes", "*.bin filter=lfs");
  REQUIRE(::mkdir((d + "/onnx").c_str(), 0755) == 0);
  Spit(d + "/onnx/model.onnx", "x");
  // A Hugging Face cache snapshot links its files into blobs/.
  REQUIRE(::mkdir((d + "/blobs").c_str(), 0755) == 0);
  Spit(d + "/blobs/0a1b", "a\nb\n");
  REQUIRE(::symlink("blobs/0a1b", (d + "/vocab.txt").c_str()) == 0);

  auto ckpt = ReadNativeCheckpoint(d, CheckpointFormat::kSafetensors);
  REQUIRE(ckpt.ok());
  const auto& m = ckpt->source.manifest;
  std::vector<std::string> names;
  for (const auto& f : m.files()) names.push_back(f.name());
  CHECK(names == std::vector<std::string>{"config.json", "tokenizer.json", "vocab.txt"});
  CHECK(m.tensors_size() == model.source.manifest.tensors_size());
  REQUIRE(ValidateManifest(m).ok());
  for (const auto& f : m.files()) {
    const auto& bytes = *static_cast<const char*>(ckpt->source.storage_data[f.storage()]);
    CHECK(std::string(&bytes, m.storages(static_cast<int>(f.storage())).size()) == Slurp(d + "/" + f.name()));
  }
  // A single weights file, not its directory: no files.
  auto file = ReadNativeCheckpoint(d + "/model.safetensors", CheckpointFormat::kSafetensors);
  REQUIRE(file.ok());
  CHECK(file->source.manifest.files().empty());
  // Over the limit: refused, naming the largest.
  Checkpoint limited;
  auto status = AddDirectoryFiles(d, &limited, 8);
  REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(status.message()), Catch::Contains("config.json (") && Catch::Contains("more than"));
}

}  // namespace
}  // namespace zerocopy
