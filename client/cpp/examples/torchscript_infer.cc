// An inference loop over a TorchScript model preloaded into zerocopyd:
//
//   zerocopy preload model.pt --name mlp        # a torch.jit.save archive
//   zerocopy_torchscript_infer mlp 1,64 100     # input shape, iterations
//
// Maps the model (milliseconds, no copy: the parameters are views of the
// shared segment), runs forward on a fixed random input, prints the timings
// and the output's sum (the same on every run and in every process).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "zerocopy/client.h"
#include "zerocopy/torch.h"

namespace {

double Ms(std::chrono::steady_clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s NAME|DIGEST SHAPE [ITERATIONS]   (SHAPE like 1,64; socket from $ZEROCOPY_SOCKET)\n",
                 argv[0]);
    return 2;
  }
  std::vector<int64_t> shape;
  for (absl::string_view d : absl::StrSplit(argv[2], ',')) {
    int64_t v;
    if (!absl::SimpleAtoi(d, &v) || v <= 0) {
      std::fprintf(stderr, "bad shape '%s': positive integers separated by commas\n", argv[2]);
      return 2;
    }
    shape.push_back(v);
  }
  int iterations = argc > 3 ? std::atoi(argv[3]) : 100;
  if (iterations <= 0) iterations = 1;

  auto start = std::chrono::steady_clock::now();
  auto model = zerocopy::Client::ForThisProcess()->Map(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "map %s: %s\n", argv[1], model.status().ToString().c_str());
    return 1;
  }
  auto mapped = std::chrono::steady_clock::now();
  auto module = zerocopy::LoadTorchScript(*model);
  if (!module.ok()) {
    std::fprintf(stderr, "load %s: %s\n", argv[1], module.status().ToString().c_str());
    return 1;
  }
  auto loaded = std::chrono::steady_clock::now();

  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  std::vector<torch::jit::IValue> inputs{torch::randn(shape)};
  at::Tensor out;
  std::vector<double> latencies;
  for (int i = 0; i < iterations; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    out = module->forward(inputs).toTensor();
    latencies.push_back(Ms(std::chrono::steady_clock::now() - t0));
  }
  std::sort(latencies.begin(), latencies.end());
  std::printf("model %s: map %.2f ms, TorchScript load %.2f ms, %zu tensors\n", (*model)->digest().c_str(),
              Ms(mapped - start), Ms(loaded - mapped), (*model)->tensor_count());
  std::printf("forward x%d: p50 %.3f ms, p99 %.3f ms\n", iterations, latencies[latencies.size() / 2],
              latencies[std::min(latencies.size() - 1, latencies.size() * 99 / 100)]);
  std::printf("output shape [%s], sum %.6f\n", absl::StrJoin(out.sizes(), ",").c_str(), out.sum().item<double>());
  return 0;
}
