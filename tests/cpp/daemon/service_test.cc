// zerocopyd's service guarantees beyond single calls: tags, races,
// segment files and their modes, small and huge-page tmpfs mounts,
// sessions, systemd readiness, health and reflection.
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <cstring>
#include <thread>

#include <catch2/catch.hpp>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "support.h"
#include "zerocopy/manifest.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;
using testing::MakeModel;

TEST_CASE("moving a name leaves the old digest to those who use it", "[service]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  auto v1_model = MakeModel(1, 1000, 51), v2_model = MakeModel(1, 1000, 52);
  PublishOptions options;
  options.name = "model";
  auto v1_info = client->Publish(v1_model.source, options);
  REQUIRE(v1_info.ok());
  auto old_mapping = client->Map("model");
  REQUIRE(old_mapping.ok());
  auto v2_info = client->Publish(v2_model.source, options);
  REQUIRE(v2_info.ok());
  REQUIRE(client->Get("model")->model().digest() == v2_info->digest());
  auto old = client->Get(v1_info->digest());
  REQUIRE(old.ok());
  REQUIRE(old->model().names_size() == 0);
  REQUIRE((*old_mapping)->ComputeDigest() == v1_info->digest());
  REQUIRE(client->Tag("model", v1_info->digest()).ok());
  REQUIRE(client->Get("model")->model().digest() == v1_info->digest());
}

TEST_CASE("concurrent publishers of the same bytes end with one model", "[service]") {
  DaemonProcess d;
  d.Start();
  auto model = MakeModel(4, 1u << 18, 53);
  std::vector<std::string> digests(6);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (size_t i = 0; i < digests.size(); ++i) {
    threads.emplace_back([&, i] {
      auto info = d.NewClient()->Publish(model.source);  // one client (connection) each
      if (info.ok())
        digests[i] = info->digest();
      else
        ++failures;
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(failures == 0);
  for (const auto& digest : digests) REQUIRE(digest == digests[0]);
  auto client = d.NewClient();
  REQUIRE(client->List()->models_size() == 1);
  REQUIRE(client->Stats()->bytes_used() == client->List()->models(0).size());
  REQUIRE(client->Stats()->bytes_staging() == 0);
}

TEST_CASE("a map racing a delete maps the model whole or not at all", "[service]") {
  DaemonProcess d;
  d.Start();
  auto model = MakeModel(2, 1u << 16, 54);
  auto publisher = d.NewClient();
  PublishOptions options;
  options.name = "racy";
  std::atomic<bool> stop{false};
  std::atomic<int> mapped{0}, not_found{0}, wrong{0}, other{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      auto client = d.NewClient();
      while (!stop) {
        auto m = client->Map("racy");
        if (m.ok()) {
          ++mapped;
          if ((*m)->ComputeDigest(1) != (*m)->digest()) ++wrong;
        } else if (absl::IsNotFound(m.status())) {
          ++not_found;
        } else {
          ++other;
          UNSCOPED_INFO(m.status().ToString());
        }
      }
    });
  }
  for (int i = 0; i < 60; ++i) {
    REQUIRE(publisher->Publish(model.source, options).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    auto deleted = publisher->Delete("racy");
    REQUIRE((deleted.ok() || absl::IsNotFound(deleted.status())));
  }
  stop = true;
  for (auto& t : readers) t.join();
  INFO("mapped " << mapped << " not found " << not_found);
  REQUIRE(wrong == 0);
  REQUIRE(other == 0);
  REQUIRE(mapped + not_found > 0);
  // Whatever interleaving happened, the catalog and the files agree.
  auto info = publisher->Publish(model.source, options);
  REQUIRE(info.ok());
  REQUIRE(::access(info->segment_path().c_str(), R_OK) == 0);
  auto final_map = publisher->Map("racy");
  REQUIRE(final_map.ok());
  REQUIRE((*final_map)->ComputeDigest() == info->digest());
}

TEST_CASE("segment files: exact size, read-only, in a 0710 directory", "[service]") {
  DaemonProcess d;
  d.Start();
  auto client = d.NewClient();
  auto model = MakeModel(3, 1001, 55);
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  struct stat st;
  REQUIRE(::stat(d.segment_dir().c_str(), &st) == 0);
  REQUIRE((st.st_mode & 07777) == 0710);
  REQUIRE(::stat(info->segment_path().c_str(), &st) == 0);
  REQUIRE((st.st_mode & 07777) == 0440);
  auto got = client->Get(info->digest());
  REQUIRE(static_cast<uint64_t>(st.st_size) == got->manifest().total_size());
  REQUIRE(CheckLayout(got->manifest()).ok());
  REQUIRE(got->manifest().storages(1).offset() % kStorageAlignment == 0);
  REQUIRE(info->segment_path() == d.segment_dir() + "/" + info->digest() + ".seg");
}

using testing::Tmpfs;

// A daemon whose segment directory is on a tmpfs of 8 MiB, none of it
// held in reserve.
struct DaemonOnSmallTmpfs {
  Tmpfs tmpfs{"8m"};
  testing::TempDir conf;
  DaemonProcess d{Options(tmpfs, conf)};

  DaemonOnSmallTmpfs() { d.Start(); }
  static DaemonProcess::Options Options(const Tmpfs& fs, const testing::TempDir& conf) {
    std::string config = conf.path() + "/zerocopyd.toml";
    std::ofstream(config) << "tmpfs_reserve = 0\n";
    DaemonProcess::Options options;
    options.segment_dir = fs.path();
    options.extra_args = {"--config", config};
    return options;
  }
};

TEST_CASE("a full tmpfs evicts as the budget does, and a model it cannot hold is a clear error, not a SIGBUS",
          "[service]") {
  DaemonOnSmallTmpfs node;
  Tmpfs& small = node.tmpfs;
  DaemonProcess& d = node.d;
  auto client = d.NewClient();
  auto fits = MakeModel(1, (4u << 20) / 4, 56);
  auto first = client->Publish(fits.source);
  REQUIRE(first.ok());
  // The budget (1G) has room, the tmpfs has not: the least recently used
  // model that is neither pinned nor leased makes way, as for the budget.
  auto second = client->Publish(MakeModel(1, (6u << 20) / 4, 57).source);
  REQUIRE(second.ok());
  REQUIRE(client->List()->models_size() == 1);
  REQUIRE(client->Stats()->evictions() == 1);
  // More than the tmpfs holds at all: refused, and nothing evicted for it.
  auto too_big = MakeModel(1, (10u << 20) / 4, 58);
  auto refused = client->Publish(too_big.source);
  REQUIRE(refused.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("does not fit in " + small.path()));
  REQUIRE(client->List()->models_size() == 1);
  // A pinned model is never evicted for room.
  REQUIRE(client->Pin(second->digest()).ok());
  auto no_room = client->Publish(fits.source);
  REQUIRE(no_room.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(client->List()->models(0).digest() == second->digest());
  REQUIRE(client->Stats()->bytes_staging() == 0);
  REQUIRE(client->Stats()->huge_pages() == false);
}

TEST_CASE("a file system that fills up under a writer is an error for it, not a SIGBUS", "[service]") {
  // The daemon sizes a staging file without allocating it (its writers
  // pwrite it): that a full file system is the writer's error, not a
  // SIGBUS, is checked here with the tmpfs filled by someone else between
  // CreateModel and the writes (a pull's IncomingModel).
  DaemonOnSmallTmpfs node;
  Tmpfs& small = node.tmpfs;
  DaemonProcess& d = node.d;
  auto client = d.NewClient();
  auto model = MakeModel(1, (6u << 20) / 4, 59);
  v1::Manifest laid_out = model.source.manifest;  // as the node it comes from has it
  REQUIRE(AssignOffsets(&laid_out).ok());
  auto incoming = client->Receive(laid_out, "0123456789abcdef0123456789abcdef");
  INFO(incoming.status().ToString());
  REQUIRE(incoming.ok());
  {
    std::string filler = small.path() + "/../filler";
    std::ofstream out(filler, std::ios::binary);
    std::vector<char> block(1 << 20, 'x');
    for (int i = 0; i < 6; ++i) out.write(block.data(), static_cast<std::streamsize>(block.size()));
  }
  const auto* bytes = static_cast<const uint8_t*>(model.source.storage_data[0]);
  absl::Status written = (*incoming)->Write(0, bytes, (*incoming)->size());
  REQUIRE(written.code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_THAT(std::string(written.message()), Catch::Contains("file system is full"));
  (*incoming)->Abort();
  REQUIRE(client->Stats()->bytes_staging() == 0);
  REQUIRE(d.NewClient()->Stats().ok());
}

TEST_CASE("a publish whose file system fills up as it writes is an error that says so, and leaves nothing behind",
          "[service]") {
  // Publish writes its staging file with pwrite: the kernel allocates each
  // page as the write fills it, so a tmpfs that fills up under the writer
  // is the write's ENOSPC. Someone else takes all the room left once the
  // first chunk is written (one copying thread: the chunks go in order).
  DaemonOnSmallTmpfs node;
  DaemonProcess& d = node.d;
  ClientOptions one_thread;
  one_thread.socket = d.socket();
  one_thread.copy_threads = 1;
  auto client = Client::Create(one_thread);
  const std::string filler = node.tmpfs.path() + "/../filler";
  PublishOptions options;
  bool filled = false;
  options.progress = [&](uint64_t, uint64_t) {
    if (filled) return;
    filled = true;
    std::FILE* out = std::fopen(filler.c_str(), "wb");
    REQUIRE(out != nullptr);
    std::vector<char> block(64 << 10, 'x');
    while (std::fwrite(block.data(), 1, block.size(), out) == block.size() && std::fflush(out) == 0) {
    }
    std::fclose(out);
  };
  auto model = MakeModel(1, (6u << 20) / 4, 61);  // two chunks: 4 MiB, then 2 MiB
  auto refused = client->Publish(model.source, options);
  INFO(refused.status().ToString());
  REQUIRE(filled);
  REQUIRE(refused.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("file system is full"));
  REQUIRE(client->List()->models_size() == 0);
  REQUIRE(client->Stats()->bytes_staging() == 0);
  // Room made, the same client publishes the same model.
  REQUIRE(std::remove(filler.c_str()) == 0);
  auto published = client->Publish(model.source);
  INFO(published.status().ToString());
  REQUIRE(published.ok());
  REQUIRE(client->List()->models_size() == 1);
}

TEST_CASE("a commit of a staging file its writer never wrote, on a full tmpfs, is refused and the daemon lives",
          "[service]") {
  // Staging files are sized, not allocated: a writer that writes nothing
  // leaves holes, and the daemon's digest check reads them. With the tmpfs
  // full (the same member filled it), reading a hole cannot allocate its
  // page: that must be the commit's error, not a SIGBUS of zerocopyd.
  DaemonOnSmallTmpfs node;
  DaemonProcess& d = node.d;
  auto client = d.NewClient();
  auto model = MakeModel(1, (6u << 20) / 4, 62);
  v1::Manifest laid_out = model.source.manifest;
  REQUIRE(AssignOffsets(&laid_out).ok());
  auto incoming = client->Receive(laid_out, "0123456789abcdef0123456789abcdef");
  INFO(incoming.status().ToString());
  REQUIRE(incoming.ok());
  const std::string filler = node.tmpfs.path() + "/../filler";
  {
    std::FILE* out = std::fopen(filler.c_str(), "wb");
    REQUIRE(out != nullptr);
    std::vector<char> block(64 << 10, 'x');
    while (std::fwrite(block.data(), 1, block.size(), out) == block.size() && std::fflush(out) == 0) {
    }
    std::fclose(out);
  }
  v1::Origin origin;
  origin.set_kind("pulled");
  auto committed = (*incoming)->Commit(origin);
  INFO(committed.status().ToString());
  REQUIRE(committed.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_THAT(std::string(committed.status().message()), Catch::Contains("digest check"));
  auto after = d.NewClient();
  REQUIRE(after->Stats().ok());  // the daemon is alive
  REQUIRE(after->Stats()->bytes_staging() == 0);
  REQUIRE(after->List()->models_size() == 0);
}

TEST_CASE("a huge-page tmpfs is detected and reported", "[service]") {
  Tmpfs huge("256m", ",huge=within_size");
  DaemonProcess::Options options;
  options.segment_dir = huge.path();
  DaemonProcess d(options);
  d.Start();
  auto client = d.NewClient();
  REQUIRE(client->Stats()->huge_pages());
  auto model = MakeModel(1, (4u << 20) / 4, 58);
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  REQUIRE(info->huge_pages());
  std::string out;
  REQUIRE(testing::Run({testing::CliBinary(), "--socket", d.socket(), "inspect", info->digest()}, &out) == 0);
  REQUIRE_THAT(out, Catch::Contains("huge pages:  yes"));
}

TEST_CASE("stats show each session's process", "[service]") {
  DaemonProcess d;
  d.Start();
  auto model = MakeModel(1, 100, 59);
  auto client = d.NewClient();
  REQUIRE(client->Publish(model.source).ok());
  auto session = client->SessionId();
  REQUIRE(session.ok());
  auto stats = client->Stats();
  REQUIRE(stats.ok());
  REQUIRE(stats->sessions_size() == 1);
  REQUIRE(stats->sessions(0).id() == *session);
  REQUIRE(stats->sessions(0).pid() == ::getpid());
  REQUIRE(stats->sessions(0).uid() == ::getuid());
  REQUIRE(stats->sessions(0).gid() == ::getgid());
  REQUIRE(stats->pid() == d.pid());
  REQUIRE(stats->requests().at("CreateModel") == 1);
}

TEST_CASE("systemd hears READY=1 when serving and STOPPING=1 on SIGTERM", "[service]") {
  testing::TempDir dir;
  std::string path = dir.path() + "/notify";
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  DaemonProcess::Options options;
  options.env = {"NOTIFY_SOCKET=" + path};
  DaemonProcess d(options);
  d.Start();
  auto receive = [&] {
    char buf[512];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  };
  REQUIRE_THAT(receive(), Catch::Contains("READY=1"));
  REQUIRE(d.Stop() == 0);
  REQUIRE_THAT(receive(), Catch::Contains("STOPPING=1"));
  ::close(fd);
}

// One call of `method` with raw protobuf bytes, through gRPC's generic
// stub (no generated code for the health and reflection services here).
std::string GenericCall(const std::string& socket, const std::string& method, const std::string& request) {
  auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(&ctx, method, &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t id) {
    REQUIRE(cq.Next(&tag, &ok));
    REQUIRE(reinterpret_cast<intptr_t>(tag) == id);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  REQUIRE(step(1));
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  REQUIRE(step(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  REQUIRE(step(3));
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(4));
  REQUIRE(step(4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  REQUIRE(status.ok());
  std::vector<grpc::Slice> slices;
  REQUIRE(in.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return bytes;
}

TEST_CASE("the daemon serves gRPC health and reflection", "[service]") {
  DaemonProcess d;
  d.Start();
  // HealthCheckRequest{service: ""} is empty; SERVING is field 1 = 1.
  REQUIRE(GenericCall(d.socket(), "/grpc.health.v1.Health/Check", "") == std::string("\x08\x01", 2));
  // ServerReflectionRequest{list_services: ""} (field 7).
  std::string listed = GenericCall(d.socket(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   std::string("\x3a\x00", 2));
  REQUIRE_THAT(listed, Catch::Contains("zerocopy.v1.ModelStore"));
  REQUIRE_THAT(listed, Catch::Contains("grpc.health.v1.Health"));
}

}  // namespace
}  // namespace zerocopy
