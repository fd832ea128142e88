// Inference over an AOTInductor package preloaded into zerocopyd, from C++
// without Python:
//
//   # in Python, once: compile with the weights beside the library
//   torch._inductor.aoti_compile_and_package(ep, package_path="m.pt2", inductor_configs={
//       "aot_inductor.package_constants_in_so": False,
//       "aot_inductor.package_constants_on_disk_format": "pickle_weights"})
//   zerocopy preload m.pt2 --name m
//   zerocopy_aoti_infer m 1,16 100 [long]   # input shape, iterations, dtype
//
// Maps the model (its weights are the node's one shared copy), hands them
// to torch's AOTIModelPackageLoader as its constants (no copy), runs the
// compiled program on a fixed input (float: seed-0 randn; long: 0, 1, 2,
// ... modulo 8), prints the timings and the first output's sum.
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
    std::fprintf(stderr,
                 "usage: %s NAME|DIGEST SHAPE [ITERATIONS] [float|long]   (SHAPE like 1,16; socket from "
                 "$ZEROCOPY_SOCKET)\n",
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
  const int iterations = std::max(1, argc > 3 ? std::atoi(argv[3]) : 100);
  const bool integer = argc > 4 && std::string(argv[4]) == "long";

  auto start = std::chrono::steady_clock::now();
  auto model = zerocopy::Client::ForThisProcess()->Map(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "map %s: %s\n", argv[1], model.status().ToString().c_str());
    return 1;
  }
  auto mapped = std::chrono::steady_clock::now();
  auto compiled = zerocopy::LoadAotInductor(*model);
  if (!compiled.ok()) {
    std::fprintf(stderr, "load %s: %s\n", argv[1], compiled.status().ToString().c_str());
    return 1;
  }
  auto loaded = std::chrono::steady_clock::now();

  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  at::Tensor x = torch::randn(shape);
  if (integer) x = torch::remainder(torch::arange(x.numel(), at::kLong), 8).reshape(shape);
  std::vector<at::Tensor> out;
  std::vector<double> latencies;
  for (int i = 0; i < iterations; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto run = (*compiled)->Run({x});
    if (!run.ok()) {
      std::fprintf(stderr, "run: %s\n", run.status().ToString().c_str());
      return 1;
    }
    out = std::move(*run);
    latencies.push_back(Ms(std::chrono::steady_clock::now() - t0));
  }
  std::sort(latencies.begin(), latencies.end());
  std::printf("model %s: map %.2f ms, AOTInductor load %.2f ms, %zu constants\n", (*model)->digest().c_str(),
              Ms(mapped - start), Ms(loaded - mapped), (*compiled)->constants().size());
  std::printf("run x%d: p50 %.3f ms, p99 %.3f ms\n", iterations, latencies[latencies.size() / 2],
              latencies[std::min(latencies.size() - 1, latencies.size() * 99 / 100)]);
  std::printf("output shape [%s], sum %.6f\n", absl::StrJoin(out.at(0).sizes(), ",").c_str(),
              out.at(0).sum().item<double>());
  return 0;
}
