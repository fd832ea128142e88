// zerocopy_bench: the C++ measurements behind `make bench` (bench/bench.py
// runs it and prints the tables). Every mode prints one JSON object.
//
//   zerocopy_bench getmodel --socket S --model NAME --clients N --seconds T
//       N threads, each with its own client (its own gRPC channel and
//       connection, as N processes have), calling GetModel in a loop:
//       calls/s and the latency percentiles. Every mode below gives each
//       thread a connection of its own too.
//   zerocopy_bench getmodel-raw --socket S --model NAME --clients N --seconds T [--deadline 1]
//       the same GetModel through gRPC's generic stub, as health calls:
//       the request as bytes, the response unparsed (the daemon's share).
//   zerocopy_bench getmodel-message --socket S --model NAME --clients N --seconds T
//       the same GetModel through the generated stub, the manifest asked
//       for as a message and parsed every call (before manifest_as_bytes).
//   zerocopy_bench health --socket S --clients N --seconds T [--deadline 1]
//       the same loop over grpc.health.v1.Health/Check: the floor a unary
//       gRPC call over the unix socket costs on this machine. --deadline 1:
//       each call with the deadline the client library gives every call
//       (its default timeout: the same call options as GetModel's); raw
//       GetModel takes it too.
//   zerocopy_bench memcpy --bytes B [--threads K] [--dir /dev/shm] [--repeats R]
//       copies B bytes into a fresh file in DIR, mapped shared (what a
//       publish does, without hashing): page faults included.
//   zerocopy_bench xxh3 --bytes B [--threads K] [--repeats R]
//       the digest's leaf hashes (XXH3-128 per 4 MiB chunk) over B bytes.
//   zerocopy_bench firstmap --socket S --model REF
//       what the first Map of a fresh process costs, step by step (run it
//       in a fresh process each time): the client made, the session (the
//       channel, the Session stream and its Hello), GetModel with its lease
//       and the mmap; then a second Map of the same model.
//   zerocopy_bench firstmap --socket S --model DIGEST --segment PATH
//       the first MapSegment of a fresh process instead (the mapping made
//       from the sealed files, the lease asked for in the background), and
//       how long until that lease is held.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "zerocopy/client.h"
#include "zerocopy/digest.h"
#include "zerocopy/parallel_for.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

std::map<std::string, std::string> Flags(int argc, char** argv) {
  std::map<std::string, std::string> flags;
  for (int i = 2; i + 1 < argc; i += 2) flags[argv[i]] = argv[i + 1];
  return flags;
}

std::string Get(const std::map<std::string, std::string>& f, const std::string& k, const std::string& def = "") {
  auto it = f.find(k);
  return it == f.end() ? def : it->second;
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<uint8_t> Source(size_t bytes) {
  std::vector<uint8_t> src(bytes);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(&src[i], &x, 8);
  }
  return src;
}

void PrintSeconds(const char* mode, size_t bytes, unsigned threads, const std::vector<double>& s) {
  std::printf("{\"mode\": \"%s\", \"bytes\": %zu, \"threads\": %u, \"seconds\": [", mode, bytes, threads);
  for (size_t i = 0; i < s.size(); ++i) std::printf("%s%.6f", i ? ", " : "", s[i]);
  std::printf("]}\n");
}

// One unary call per invocation, returning whether it succeeded.
using CallFn = std::function<bool()>;
using MakeCall = std::function<CallFn()>;  // per client thread

int RoundTrips(const char* mode, const std::map<std::string, std::string>& f, const MakeCall& make) {
  const int clients = std::atoi(Get(f, "--clients", "1").c_str());
  const double seconds = std::atof(Get(f, "--seconds", "2").c_str());
  std::vector<std::vector<double>> latencies(clients);
  std::atomic<int> errors{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      CallFn call = make();
      if (!call()) ++errors;  // connect before the clock starts
      while (!go.load()) std::this_thread::yield();
      auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
      for (auto now = Clock::now(); now < end;) {
        bool ok = call();
        auto after = Clock::now();
        if (!ok) ++errors;
        latencies[c].push_back(std::chrono::duration<double, std::micro>(after - now).count());
        now = after;
      }
    });
  }
  go = true;
  auto start = Clock::now();
  for (auto& t : threads) t.join();
  double elapsed = Seconds(Clock::now() - start);
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) {
    return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<size_t>(p * all.size()))];
  };
  std::printf(
      "{\"mode\": \"%s\", \"clients\": %d, \"calls\": %zu, \"errors\": %d, \"calls_per_s\": %.1f, "
      "\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f}\n",
      mode, clients, all.size(), errors.load(), all.size() / elapsed, pct(0.50), pct(0.99),
      all.empty() ? 0.0 : all.back());
  return errors.load() ? 1 : 0;
}

int GetModel(const std::map<std::string, std::string>& f) {
  const std::string socket = Get(f, "--socket"), model = Get(f, "--model");
  return RoundTrips("getmodel", f, [&]() -> CallFn {
    zerocopy::ClientOptions options;
    options.socket = socket;
    auto client = zerocopy::Client::Create(options);
    return [client, model] { return client->Get(model).ok(); };
  });
}

int FirstMap(const std::map<std::string, std::string>& f) {
  const std::string socket = Get(f, "--socket"), model = Get(f, "--model");
  const auto segment = f.find("--segment");
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  const auto t0 = Clock::now();
  zerocopy::ClientOptions options;
  options.socket = socket;
  auto client = zerocopy::Client::Create(options);
  const auto t1 = Clock::now();
  if (segment != f.end()) {
    auto mapped = client->MapSegment(model, segment->second);
    const auto t2 = Clock::now();
    client->WaitForLeases();
    const auto t3 = Clock::now();
    if (!mapped.ok()) {
      std::fprintf(stderr, "firstmap: %s\n", mapped.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "{\"mode\": \"firstmap-segment\", \"create_ms\": %.3f, \"map_ms\": %.3f, \"first_total_ms\": %.3f, "
        "\"lease_held_after_ms\": %.3f}\n",
        ms(t0, t1), ms(t1, t2), ms(t0, t2), ms(t0, t3));
    return 0;
  }
  auto session = client->SessionId();
  const auto t2 = Clock::now();
  auto first = client->Map(model);
  const auto t3 = Clock::now();
  auto second = client->Map(model);
  const auto t4 = Clock::now();
  if (!session.ok() || !first.ok() || !second.ok()) {
    std::fprintf(stderr, "firstmap: %s\n", (!session.ok() ? session.status() : first.status()).ToString().c_str());
    return 1;
  }
  std::printf(
      "{\"mode\": \"firstmap\", \"create_ms\": %.3f, \"session_ms\": %.3f, \"map_ms\": %.3f, "
      "\"first_total_ms\": %.3f, \"second_map_ms\": %.3f}\n",
      ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t0, t3), ms(t3, t4));
  return 0;
}

// A channel of its own, with its own connection, as each client process
// has (and as zerocopy::Client makes): gRPC would otherwise let every
// channel of this process to the same socket share one connection, which
// is not what N client processes get.
std::shared_ptr<grpc::Channel> OwnChannel(const std::string& socket) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args);
}

// The deadline zerocopy::Client gives each call (its default timeout).
std::chrono::system_clock::time_point ClientDeadline() {
  return std::chrono::system_clock::now() + zerocopy::ClientOptions().timeout;
}

// One unary call through the generic stub: the request as bytes, the
// response left unparsed. What a call costs with no client-side work.
bool RawUnary(grpc::GenericStub& stub, const std::string& method, const std::string& request_bytes, bool deadline) {
  grpc::ClientContext ctx;
  if (deadline) ctx.set_deadline(ClientDeadline());
  grpc::CompletionQueue cq;
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  auto call = stub.PrepareUnaryCall(&ctx, method, request, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  void* drained;
  bool more;
  while (cq.Next(&drained, &more)) {
  }
  return ok && status.ok();
}

int Health(const std::map<std::string, std::string>& f) {
  const std::string socket = Get(f, "--socket");
  const bool deadline = Get(f, "--deadline", "0") == "1";
  return RoundTrips("health", f, [&]() -> CallFn {
    auto channel = OwnChannel(socket);
    auto stub = std::make_shared<grpc::GenericStub>(channel);
    // An empty HealthCheckRequest is zero bytes.
    return [stub, deadline] { return RawUnary(*stub, "/grpc.health.v1.Health/Check", "", deadline); };
  });
}

// GetModel as Health is called: the same daemon work and response bytes,
// none of the client library's (no parse, no status conversion), to tell
// the daemon's share of a GetModel from the client's.
int GetModelRaw(const std::map<std::string, std::string>& f) {
  const std::string socket = Get(f, "--socket"), model = Get(f, "--model");
  const bool deadline = Get(f, "--deadline", "0") == "1";
  zerocopy::v1::GetModelRequest request;
  request.mutable_model()->set_ref(model);
  request.set_manifest_as_bytes(true);  // as the client library asks
  const std::string bytes = request.SerializeAsString();
  return RoundTrips("getmodel-raw", f, [&]() -> CallFn {
    auto channel = OwnChannel(socket);
    auto stub = std::make_shared<grpc::GenericStub>(channel);
    return [stub, bytes, deadline] { return RawUnary(*stub, "/zerocopy.v1.ModelStore/GetModel", bytes, deadline); };
  });
}

// GetModel through the generated stub, with the client library's
// deadline, the manifest asked for as a message and parsed on every call:
// what a GetModel cost before manifest_as_bytes (and costs an older client).
int GetModelMessage(const std::map<std::string, std::string>& f) {
  const std::string socket = Get(f, "--socket"), model = Get(f, "--model");
  return RoundTrips("getmodel-message", f, [&]() -> CallFn {
    std::shared_ptr<zerocopy::v1::ModelStore::Stub> stub = zerocopy::v1::ModelStore::NewStub(OwnChannel(socket));
    return [stub, model] {
      zerocopy::v1::GetModelRequest request;
      request.mutable_model()->set_ref(model);
      zerocopy::v1::GetModelResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(ClientDeadline());
      return stub->GetModel(&ctx, request, &response).ok() && response.manifest().tensors_size() > 0;
    };
  });
}

int Memcpy(const std::map<std::string, std::string>& f) {
  const size_t bytes = std::strtoull(Get(f, "--bytes").c_str(), nullptr, 10);
  const unsigned threads = std::atoi(Get(f, "--threads", "0").c_str());
  const int repeats = std::atoi(Get(f, "--repeats", "3").c_str());
  const std::string dir = Get(f, "--dir", "/dev/shm");
  std::vector<uint8_t> src = Source(bytes);
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    std::string path = dir + "/zerocopy-bench-memcpy-" + std::to_string(::getpid());
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      std::perror(path.c_str());
      return 1;
    }
    auto start = Clock::now();
    void* dst = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (dst == MAP_FAILED) {
      std::perror("mmap");
      return 1;
    }
    constexpr size_t kChunk = 16u << 20;
    zerocopy::ParallelFor((bytes + kChunk - 1) / kChunk, threads, [&](size_t i) {
      size_t off = i * kChunk;
      std::memcpy(static_cast<uint8_t*>(dst) + off, src.data() + off, std::min(kChunk, bytes - off));
    });
    times.push_back(Seconds(Clock::now() - start));
    ::munmap(dst, bytes);
    ::close(fd);
    ::unlink(path.c_str());
  }
  PrintSeconds("memcpy", bytes, threads, times);
  return 0;
}

int Xxh3(const std::map<std::string, std::string>& f) {
  const size_t bytes = std::strtoull(Get(f, "--bytes").c_str(), nullptr, 10);
  const unsigned threads = std::atoi(Get(f, "--threads", "0").c_str());
  const int repeats = std::atoi(Get(f, "--repeats", "3").c_str());
  std::vector<uint8_t> src = Source(bytes);
  std::vector<double> times;
  std::vector<zerocopy::Hash128> leaves(zerocopy::DigestLeafCount(bytes));
  for (int r = 0; r < repeats; ++r) {
    auto start = Clock::now();
    zerocopy::ParallelFor(leaves.size(), threads,
                          [&](size_t i) { leaves[i] = zerocopy::HashLeaf(src.data(), bytes, i); });
    times.push_back(Seconds(Clock::now() - start));
  }
  PrintSeconds("xxh3", bytes, threads, times);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s getmodel|getmodel-raw|getmodel-message|health|memcpy|xxh3|firstmap [--flag value ...]  "
                 "(see the source's header)\n",
                 argv[0]);
    return 2;
  }
  std::string mode = argv[1];
  auto flags = Flags(argc, argv);
  if (mode == "getmodel") return GetModel(flags);
  if (mode == "health") return Health(flags);
  if (mode == "getmodel-raw") return GetModelRaw(flags);
  if (mode == "getmodel-message") return GetModelMessage(flags);
  if (mode == "firstmap") return FirstMap(flags);
  if (mode == "memcpy") return Memcpy(flags);
  if (mode == "xxh3") return Xxh3(flags);
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
