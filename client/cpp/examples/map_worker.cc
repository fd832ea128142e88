// map_worker: loads a model the way a serving process would, checksums
// every weight, reports its memory, and optionally waits so that a parent
// can measure several such processes at once (the demo and the sharing
// tests use it).
//
//   map_worker --model NAME [--socket PATH] [--scribble] [--hold]
//       maps the model through zerocopyd (copy-on-write)
//   map_worker --file FILE.safetensors [--hold]
//       reads the file into private memory instead (the baseline)
//   map_worker --model NAME --gpu UUID [--socket PATH] [--scribble] [--hold]
//       opens the model's shared device copy on that GPU (CUDA IPC, or a
//       fake GPU of the tests) and checksums it copied back to the host;
//       also prints gpu_ordinal and device_ptr. --scribble writes into the
//       shared copy (every process on the GPU sees it: the tests show it).
//
// Prints one JSON line: mode, pid, load_ms, checksum_ms, checksum, tensors,
// bytes (of tensor data), rss_kb, pss_kb. --scribble writes into the first weight after
// loading (copy-on-write keeps that private). --hold then waits for stdin to
// close before exiting.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "zerocopy/client.h"
#include "zerocopy/cuda_device.h"
#include "zerocopy/manifest.h"
#include "zerocopy/safetensors_file.h"

namespace {

long SmapsRollupKb(const char* field) {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::stol(line.substr(n + 1));
  }
  return -1;
}

// XXH3-64 of each tensor's bytes, in name order, hashed together.
std::string Checksum(const std::map<std::string, std::pair<const uint8_t*, uint64_t>>& tensors) {
  std::vector<uint64_t> hashes;
  for (const auto& [name, t] : tensors) hashes.push_back(XXH3_64bits(t.first, t.second));
  char out[17];
  std::snprintf(out, sizeof out, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(hashes.data(), hashes.size() * 8)));
  return out;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "map_worker: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, file, socket, gpu;
  bool hold = false, scribble = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--model" && i + 1 < argc)
      model = argv[++i];
    else if (a == "--file" && i + 1 < argc)
      file = argv[++i];
    else if (a == "--socket" && i + 1 < argc)
      socket = argv[++i];
    else if (a == "--gpu" && i + 1 < argc)
      gpu = argv[++i];
    else if (a == "--hold")
      hold = true;
    else if (a == "--scribble")
      scribble = true;
    else
      return Fail("usage: map_worker (--model NAME [--gpu UUID] [--socket PATH] [--scribble] | --file FILE) [--hold]");
  }
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();  // reset after CUDA's start in --gpu mode
  std::map<std::string, std::pair<const uint8_t*, uint64_t>> tensors;
  std::shared_ptr<zerocopy::MappedModel> mapped;
  std::vector<uint8_t> buffer;
  std::optional<zerocopy::SafetensorsFile> parsed;
  uint64_t bytes = 0;
  std::shared_ptr<zerocopy::DeviceModel> on_device;
  double gpu_init_ms = 0;
  if (!gpu.empty() && getenv("ZEROCOPY_FAKE_GPUS") == nullptr) {
    // CUDA's own start (driver, context) is not part of attaching: time it apart.
    auto i0 = clock::now();
    auto ordinal = zerocopy::cuda::OrdinalOf(gpu);
    if (!ordinal.ok()) return Fail(ordinal.status().ToString());
    auto context = zerocopy::cuda::MemoryInfo(*ordinal);  // creates the context, as torch does at its start
    if (!context.ok()) return Fail(context.status().ToString());
    gpu_init_ms = std::chrono::duration<double, std::milli>(clock::now() - i0).count();
    t0 = clock::now();
  }
  std::vector<std::vector<uint8_t>> copied_back;  // device tensors, on the host for the checksum
  double copy_back_ms = 0;
  if (!model.empty() && !gpu.empty()) {
    zerocopy::ClientOptions options;
    options.socket = socket;
    auto client = zerocopy::Client::Create(options);
    auto m = client->MapDevice(model, gpu);
    if (!m.ok()) return Fail(m.status().ToString());
    on_device = *m;
    auto c0 = clock::now();
    for (size_t i = 0; i < on_device->tensor_count(); ++i) {
      auto view = on_device->tensor(i);
      auto extent = zerocopy::TensorExtent(*view.spec);
      if (!extent.ok()) return Fail(extent.status().ToString());
      if (on_device->fake()) {
        tensors[view.spec->name()] = {static_cast<const uint8_t*>(view.data), *extent};
        continue;
      }
      copied_back.emplace_back(*extent);
      auto s = zerocopy::cuda::CopyToHost(on_device->device_ordinal(), view.data, copied_back.back().data(), *extent);
      if (!s.ok()) return Fail(s.ToString());
      tensors[view.spec->name()] = {copied_back.back().data(), *extent};
    }
    copy_back_ms = std::chrono::duration<double, std::milli>(clock::now() - c0).count();
    if (scribble && on_device->fake() && !tensors.empty()) {
      // The shared copy itself (CUDA IPC memory is writable too).
      auto& first = tensors.begin()->second;
      std::memset(const_cast<uint8_t*>(first.first), 0xCD, std::min<uint64_t>(first.second, 4096));
      scribble = false;
    }
  } else if (!model.empty()) {
    zerocopy::ClientOptions options;
    options.socket = socket;
    auto client = zerocopy::Client::Create(options);
    auto m = client->Map(model);
    if (!m.ok()) return Fail(m.status().ToString());
    mapped = *m;
    for (size_t i = 0; i < mapped->tensor_count(); ++i) {
      auto view = mapped->tensor(i);
      tensors[view.spec->name()] = {view.data, view.extent};
    }
  } else if (!file.empty()) {
    int fd = ::open(file.c_str(), O_RDONLY);
    if (fd < 0) return Fail("open " + file + ": " + std::strerror(errno));
    struct stat st;
    ::fstat(fd, &st);
    buffer.resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < buffer.size()) {
      ssize_t n = ::read(fd, buffer.data() + done, buffer.size() - done);
      if (n <= 0) return Fail("read " + file);
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    auto p = zerocopy::SafetensorsFile::Parse(buffer.data(), buffer.size());
    if (!p.ok()) return Fail(p.status().ToString());
    parsed.emplace(std::move(*p));
    for (const auto& e : parsed->tensors()) tensors[e.name] = {e.data, e.size};
  } else {
    return Fail("give --model NAME or --file FILE");
  }
  auto t1 = clock::now() -
            std::chrono::duration_cast<clock::duration>(std::chrono::duration<double, std::milli>(copy_back_ms));
  for (const auto& [name, t] : tensors) bytes += t.second;
  if (scribble && !tensors.empty()) {
    auto& first = tensors.begin()->second;
    std::memset(const_cast<uint8_t*>(first.first), 0xAB, std::min<uint64_t>(first.second, 4096));
  }
  std::string checksum = Checksum(tensors);
  auto t2 = clock::now();
  std::printf(
      "{\"mode\": \"%s\", \"pid\": %d, \"load_ms\": %.3f, \"checksum_ms\": %.3f, \"checksum\": \"%s\", "
      "\"tensors\": %zu, \"bytes\": %llu, \"rss_kb\": %ld, \"pss_kb\": %ld, \"gpu_ordinal\": %d, "
      "\"device_ptr\": %llu, \"gpu_init_ms\": %.3f}\n",
      model.empty() ? "read-file" : (gpu.empty() ? "zerocopy" : "zerocopy-gpu"), getpid(),
      std::chrono::duration<double, std::milli>(t1 - t0).count(),
      std::chrono::duration<double, std::milli>(t2 - t1).count(), checksum.c_str(), tensors.size(),
      static_cast<unsigned long long>(bytes), SmapsRollupKb("Rss"), SmapsRollupKb("Pss"),
      on_device ? on_device->device_ordinal() : -1,
      static_cast<unsigned long long>(on_device ? reinterpret_cast<uintptr_t>(on_device->data()) : 0), gpu_init_ms);
  std::fflush(stdout);
  if (hold) {
    char c;
    while (::read(0, &c, 1) > 0) {
    }
  }
  return 0;
}
