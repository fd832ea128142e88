// The C++ torch adapter against the real daemon: TorchScript archives
// preloaded and loaded as modules whose weights are views of the mapping,
// state dicts of torch tensors that keep the mapping alive, and the example
// inference program.
#include <cstdlib>
#include <cstring>

#include <catch2/catch.hpp>

#include "support.h"
#include "zerocopy/checkpoint.h"
#include "zerocopy/torch.h"
#include "zerocopy/torch_formats.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;
using testing::TempDir;

torch::jit::Module MakeScriptModule() {
  torch::manual_seed(42);
  torch::jit::Module m("Net");
  m.register_parameter("weight", torch::randn({8, 16}), /*is_buffer=*/false);
  m.register_parameter("bias", torch::randn({8}), false);
  m.register_buffer("scale", torch::tensor({2.0f}));
  torch::jit::Module inner("Inner");
  inner.register_parameter("w", torch::randn({8, 8}), false);
  inner.define(R"(
def forward(self, x):
    return x.matmul(self.w)
)");
  m.register_module("inner", inner);
  m.define(R"(
def forward(self, x):
    return self.inner.forward((x.matmul(self.weight.t()) + self.bias) * self.scale)
)");
  return m;
}

bool Inside(const void* p, const MappedModel& model) {
  auto* b = static_cast<const uint8_t*>(p);
  return b >= model.data() && b < model.data() + model.size();
}

TEST_CASE("a TorchScript archive loads as a module whose weights are views of the mapping", "[torch]") {
  TempDir dir;
  std::string path = dir.path() + "/net.pt";
  MakeScriptModule().save(path);

  DaemonProcess daemon;
  daemon.Start();
  auto client = daemon.NewClient();
  auto format = DetectCheckpointFormat(path);
  REQUIRE(format.ok());
  CHECK(*format == CheckpointFormat::kTorchScript);
  auto checkpoint = ReadCheckpoint(path, *format);
  REQUIRE(checkpoint.ok());
  CHECK(checkpoint->source.manifest.tensors_size() == 4);
  PublishOptions options;
  options.name = "net";
  auto info = client->Publish(checkpoint->source, options);
  REQUIRE(info.ok());
  CHECK(info->format() == "torchscript");

  auto model = client->Map("net");
  REQUIRE(model.ok());
  // The skeleton in the metadata holds no weight bytes.
  torch::jit::Module reference = torch::jit::load(path);
  at::Tensor weight = reference.attr("weight").toTensor();
  std::string needle(static_cast<const char*>(weight.data_ptr()), 64);
  CHECK((*model)->manifest().metadata().find(needle) == std::string::npos);

  auto module = LoadTorchScript(*model);
  REQUIRE(module.ok());
  int params = 0;
  for (const auto& p : module->named_parameters(/*recurse=*/true)) {
    INFO(p.name);
    CHECK(Inside(p.value.data_ptr(), **model));
    ++params;
  }
  for (const auto& b : module->named_buffers(true)) {
    INFO(b.name);
    CHECK(Inside(b.value.data_ptr(), **model));
    ++params;
  }
  CHECK(params == 4);

  torch::NoGradGuard no_grad;
  at::Tensor x = torch::randn({3, 16});
  at::Tensor got = module->forward({x}).toTensor();
  at::Tensor want = reference.forward({x}).toTensor();
  CHECK(torch::equal(got, want));
}

TEST_CASE("a torch state dict over a mapping keeps it alive and keeps tied tensors tied", "[torch]") {
  DaemonProcess daemon;
  daemon.Start();
  auto client = daemon.NewClient();

  std::vector<float> block(6 * 4);
  for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<float>(i) * 0.5f;
  ModelSource source;
  source.manifest.set_format("test");
  source.manifest.add_storages()->set_size(block.size() * sizeof(float));
  source.storage_data.push_back(block.data());
  auto add = [&](const char* name, uint64_t byte_offset, std::vector<int64_t> shape, std::vector<int64_t> strides) {
    auto* t = source.manifest.add_tensors();
    t->set_name(name);
    t->set_storage(0);
    t->set_byte_offset(byte_offset);
    t->set_dtype(v1::F32);
    for (auto d : shape) t->add_shape(d);
    for (auto s : strides) t->add_strides(s);
  };
  add("a", 0, {6, 4}, {});
  add("a_tied", 0, {6, 4}, {});
  add("a_t", 0, {4, 6}, {1, 4});
  add("row2", 2 * 4 * sizeof(float), {4}, {});
  auto info = client->Publish(source);
  REQUIRE(info.ok());

  torch::OrderedDict<std::string, at::Tensor> state;
  {
    auto model = client->Map(info->digest());
    REQUIRE(model.ok());
    auto dict = TorchStateDict(*model);
    REQUIRE(dict.ok());
    state = std::move(*dict);
  }  // our MappedModel reference is gone; the tensors hold the mapping

  at::Tensor want = torch::from_blob(block.data(), {6, 4}, torch::kFloat32).clone();
  CHECK(torch::equal(state["a"], want));
  CHECK(torch::equal(state["a_t"], want.t()));
  CHECK(state["a_t"].strides() == at::IntArrayRef({1, 4}));
  CHECK(torch::equal(state["row2"], want[2]));
  CHECK(state["a"].storage().data() == state["a_tied"].storage().data());
  CHECK(state["a"].storage().is_alias_of(state["a_t"].storage()));
  // Copy-on-write: a write stays in this process and leaves the daemon's bytes alone.
  state["a"][0][0] = 1000.0f;
  CHECK(state["a_tied"][0][0].item<float>() == 1000.0f);
  auto again = client->Map(info->digest());
  REQUIRE(again.ok());
  float first;
  std::memcpy(&first, (*again)->tensor(0).data, sizeof first);
  CHECK(first == 0.0f);
}

TEST_CASE("LoadTorchScript refuses a weights-only model", "[torch]") {
  DaemonProcess daemon;
  daemon.Start();
  auto client = daemon.NewClient();
  std::vector<float> w(4, 1.0f);
  ModelSource source;
  source.manifest.add_storages()->set_size(w.size() * sizeof(float));
  source.storage_data.push_back(w.data());
  auto* t = source.manifest.add_tensors();
  t->set_name("w");
  t->set_dtype(v1::F32);
  t->add_shape(4);
  auto info = client->Publish(source);
  REQUIRE(info.ok());
  auto model = client->Map(info->digest());
  REQUIRE(model.ok());
  auto module = LoadTorchScript(*model);
  REQUIRE(module.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(module.status().message()), Catch::Contains("not a TorchScript model"));
}

TEST_CASE("the example program runs inference over a preloaded TorchScript model", "[torch]") {
  TempDir dir;
  std::string path = dir.path() + "/net.pt";
  MakeScriptModule().save(path);
  DaemonProcess daemon;
  daemon.Start();
  std::string out, err;
  REQUIRE(testing::Run({testing::CliBinary(), "--socket", daemon.socket(), "preload", path, "--name", "mlp"}, &out,
                       &err) == 0);
  ::setenv("ZEROCOPY_SOCKET", daemon.socket().c_str(), 1);
  int rc = testing::Run({TORCHSCRIPT_INFER_BIN, "mlp", "1,16", "5"}, &out, &err);
  ::unsetenv("ZEROCOPY_SOCKET");
  INFO(out << err);
  REQUIRE(rc == 0);
  // The same input (seed 0) through torch::jit::load of the file.
  torch::jit::Module reference = torch::jit::load(path);
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  at::Tensor x = torch::randn({1, 16});
  double sum = reference.forward({x}).toTensor().sum().item<double>();
  char expected[64];
  std::snprintf(expected, sizeof expected, "sum %.6f", sum);
  CHECK_THAT(out, Catch::Contains("output shape [1,8]"));
  CHECK_THAT(out, Catch::Contains(expected));
}

}  // namespace
}  // namespace zerocopy
