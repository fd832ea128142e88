// zerocopy_test_client: single requests and file operations for the
// security tests, run as another user (setpriv). Prints "OK ..." or
// "ERR CODE message" and exits 0 or 1.
//
//   test_client --socket S create [--expect DIGEST] [--empty] [--hold]
//                                            CreateModel of a 4 KiB model (a transfer of DIGEST: claims it):
//                                            prints the staging id and path; --hold: waits for stdin's EOF
//   test_client --socket S publish NAME SEED [METADATA_FILE]
//                                            publishes a 4 KiB model (bytes from SEED) under NAME, its metadata
//                                            the file's bytes (format "torch"): prints the digest
//   test_client --socket S commit ID         CommitModel (with a wrong digest: only the refusal matters)
//   test_client --socket S abort ID
//   test_client --socket S map REF           maps the model and reads every byte
//   test_client --socket S delete REF | pin REF | tag NAME REF
//   test_client open-write PATH              open(2) for writing
//   test_client list-dir DIR                 opendir(3) + readdir(3)
//   test_client link FROM TO                 link(2): a hard link to FROM
//   test_client --socket S connections N [EXPECT [half|full|junk]]
//                                            opens N connections that send half an HTTP/2 preface (or all of
//                                            it, or bytes that are not one), prints how many the daemon kept
//                                            open (once at most EXPECT are, or after 40 s), holds them until
//                                            stdin's EOF
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "zerocopy/client.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace {

int Ok(const std::string& what) {
  std::printf("OK %s\n", what.c_str());
  return 0;
}

int Err(const std::string& code, const std::string& message) {
  std::printf("ERR %s %s\n", code.c_str(), message.c_str());
  return 1;
}

int Err(const absl::Status& s) { return Err(absl::StatusCodeToString(s.code()), std::string(s.message())); }

int Err(const grpc::Status& s) {
  return Err(absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())), s.error_message());
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string socket;
  if (args.size() >= 2 && args[0] == "--socket") {
    socket = args[1];
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.empty()) return Err("INVALID_ARGUMENT", "usage: see the header of tests/cpp/test_client.cc");
  const std::string& op = args[0];

  if (op == "open-write") {
    int fd = ::open(args.at(1).c_str(), O_WRONLY);
    if (fd < 0) return Err(errno == EACCES ? "EACCES" : std::to_string(errno), std::strerror(errno));
    ::close(fd);
    return Ok("opened for writing");
  }
  if (op == "link") {
    if (::link(args.at(1).c_str(), args.at(2).c_str()) != 0) return Err(std::to_string(errno), std::strerror(errno));
    return Ok("linked");
  }
  if (op == "connections") {
    const int n = std::stoi(args.at(1));
    std::vector<int> fds;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket.c_str());
    for (int i = 0; i < n; ++i) {
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        return Err(std::to_string(errno), std::strerror(errno));
      }
      const std::string kind = args.size() > 3 ? args[3] : "half";
      const std::string sent = kind == "full"   ? "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                               : kind == "junk" ? "GET / HTTP/1.1\r\n\r\n"
                                                : "PRI * HTTP/2.0\r\n";
      // The daemon may have refused (closed) it already: no SIGPIPE for that.
      (void)!::send(fd, sent.data(), sent.size(), MSG_NOSIGNAL);
      fds.push_back(fd);
    }
    // The daemon accepts them in its own time: wait (up to 40 s) until at
    // most EXPECT are still open, if given, else half a second.
    const int expect = args.size() > 2 ? std::stoi(args[2]) : -1;
    int open = n;
    for (int waited = 0; waited < (expect < 0 ? 5 : 400); ++waited) {
      ::usleep(100000);
      open = 0;
      for (int fd : fds) {
        // What the daemon sent (its SETTINGS, a GOAWAY) is read and
        // dropped: open until the end of the stream or an error.
        char buf[4096];
        ssize_t r;
        while ((r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        }
        open += r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
      }
      if (expect >= 0 && open <= expect) break;
    }
    Ok(std::to_string(open) + " open of " + std::to_string(n));
    std::fflush(stdout);
    char c;
    while (::read(0, &c, 1) > 0) {
    }
    return 0;
  }
  if (op == "list-dir") {
    DIR* d = ::opendir(args.at(1).c_str());
    if (d == nullptr) return Err(errno == EACCES ? "EACCES" : std::to_string(errno), std::strerror(errno));
    int n = 0;
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
    return Ok(std::to_string(n) + " entries");
  }

  zerocopy::ClientOptions options;
  options.socket = socket;
  options.timeout = std::chrono::seconds(10);
  auto client = zerocopy::Client::Create(options);
  if (op == "map") {
    auto m = client->Map(args.at(1));
    if (!m.ok()) return Err(m.status());
    uint64_t sum = 0;
    for (uint64_t i = 0; i < (*m)->size(); ++i) sum += (*m)->data()[i];
    return Ok("mapped " + std::to_string((*m)->size()) + " bytes, sum " + std::to_string(sum));
  }
  if (op == "publish") {
    std::vector<uint8_t> bytes(4096, static_cast<uint8_t>(std::stoi(args.at(2))));
    zerocopy::ModelSource source;
    source.manifest.add_storages()->set_size(bytes.size());
    auto* t = source.manifest.add_tensors();
    t->set_name("w");
    t->set_dtype(zerocopy::v1::U8);
    t->add_shape(static_cast<int64_t>(bytes.size()));
    source.storage_data = {bytes.data()};
    if (args.size() > 3) {
      std::ifstream in(args[3], std::ios::binary);
      source.manifest.set_metadata(std::string(std::istreambuf_iterator<char>(in), {}));
      source.manifest.set_format("torch");
    }
    zerocopy::PublishOptions publish;
    publish.name = args.at(1);
    auto info = client->Publish(source, publish);
    return info.ok() ? Ok(info->digest()) : Err(info.status());
  }
  if (op == "delete") {
    auto d = client->Delete(args.at(1));
    return d.ok() ? Ok("deleted " + *d) : Err(d.status());
  }
  if (op == "pin") {
    auto p = client->Pin(args.at(1));
    return p.ok() ? Ok("pinned") : Err(p.status());
  }
  if (op == "tag") {
    auto t = client->Tag(args.at(1), args.at(2));
    return t.ok() ? Ok("tagged") : Err(t.status());
  }

  // Raw requests: the C++ client never leaves a model staged.
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel =
      grpc::CreateCustomChannel("unix:" + client->socket(), grpc::InsecureChannelCredentials(), channel_args);
  auto stub = zerocopy::v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (op == "create") {
    zerocopy::v1::CreateModelRequest request;
    request.mutable_manifest()->add_storages()->set_size(4096);
    auto* t = request.mutable_manifest()->add_tensors();
    t->set_name("w");
    t->set_dtype(zerocopy::v1::U8);
    t->add_shape(4096);
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--expect" && i + 1 < args.size()) request.set_expected_digest(args[i + 1]);
      if (args[i] == "--empty") request.clear_manifest();
    }
    zerocopy::v1::CreateModelResponse response;
    grpc::Status s = stub->CreateModel(&ctx, request, &response);
    if (!s.ok()) return Err(s);
    Ok(response.staging_id() + " " + response.segment_path());
    std::fflush(stdout);
    if (args.back() == "--hold") {
      char c;
      while (::read(0, &c, 1) > 0) {
      }
    }
    return 0;
  }
  if (op == "commit") {
    zerocopy::v1::CommitModelRequest request;
    request.set_staging_id(args.at(1));
    request.set_digest(std::string(32, '0'));
    zerocopy::v1::CommitModelResponse response;
    grpc::Status s = stub->CommitModel(&ctx, request, &response);
    return s.ok() ? Ok("committed") : Err(s);
  }
  if (op == "abort") {
    zerocopy::v1::AbortModelRequest request;
    request.set_staging_id(args.at(1));
    zerocopy::v1::AbortModelResponse response;
    grpc::Status s = stub->AbortModel(&ctx, request, &response);
    return s.ok() ? Ok("aborted") : Err(s);
  }
  return Err("INVALID_ARGUMENT", "unknown operation " + op);
}
