// The trust model (SECURITY.md) with real users: the daemon runs as root
// (the suite does) with its socket and segment directory in a test group;
// clients run as unprivileged users through setpriv(1): outside the group,
// in it, and two different users in it.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <catch2/catch.hpp>

#include <grpcpp/grpcpp.h>

#include "support.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy {
namespace {

using testing::Child;
using testing::DaemonProcess;

constexpr int kGroup = 47123;  // the socket's and segments' group
constexpr int kUserA = 65534;  // nobody
constexpr int kUserB = 65533;
constexpr int kOutsider = 65534;

// The test client copied where any user can run it (the build tree may sit
// under a directory only root can enter).
struct Programs {
  testing::TempDir dir;
  std::string client;
  Programs() {
    ::chmod(dir.path().c_str(), 0755);
    client = dir.path() + "/zerocopy_test_client";
    std::filesystem::copy_file(TEST_CLIENT_BIN, client);
    ::chmod(client.c_str(), 0755);
  }
};

// The staging id and path of test_client create's "OK ID PATH" line.
std::pair<std::string, std::string> Created(const std::string& line) {
  REQUIRE_THAT(line, Catch::StartsWith("OK "));
  std::string path = line.substr(36);
  while (!path.empty() && path.back() == '\n') path.pop_back();
  return {line.substr(3, 32), path};
}

struct stat StatOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st;
}

// The staging files in the daemon's segment directory.
size_t StagingFiles(const DaemonProcess& d) {
  size_t n = 0;
  for (const auto& f : testing::ListDir(d.segment_dir())) n += f.rfind("staging-", 0) == 0;
  return n;
}

struct SecureDaemon {
  testing::TempDir config_dir;
  std::unique_ptr<DaemonProcess> d;
  Programs programs;
  std::string model_digest;

  // `extra_config`: more TOML keys; `shared`: publish the model "shared".
  // `env`: the daemon's environment (failpoints).
  explicit SecureDaemon(const std::string& extra_config = "", const std::string& host_budget = "1G", bool shared = true,
                        std::vector<std::string> env = {}) {
    std::string config = config_dir.path() + "/zerocopyd.toml";
    std::ofstream(config) << "socket_group = \"" << kGroup << "\"\nsegment_group = \"" << kGroup
                          << "\"\nadmin_uids = [0]\n"
                          << extra_config;
    DaemonProcess::Options options;
    options.extra_args = {"--config", config};
    options.host_budget = host_budget;
    d = std::make_unique<DaemonProcess>(options);
    d->set_env(std::move(env));
    d->Start();
    // The temporary directories holding the socket and the segment
    // directory: traversable by everyone, as /run and /dev/shm are.
    ::chmod(std::filesystem::path(d->socket()).parent_path().c_str(), 0755);
    ::chmod(std::filesystem::path(d->segment_dir()).parent_path().c_str(), 0755);
    if (!shared) return;
    auto model = testing::MakeModel(2, 1024, 3);
    PublishOptions publish;
    publish.name = "shared";
    auto info = d->NewClient()->Publish(model.source, publish);
    REQUIRE(info.ok());
    model_digest = info->digest();
  }

  std::vector<std::string> As(int uid, int gid, std::vector<std::string> args) const {
    std::vector<std::string> argv = {"/usr/bin/setpriv",
                                     "--reuid=" + std::to_string(uid),
                                     "--regid=" + std::to_string(gid),
                                     "--clear-groups",
                                     "--",
                                     programs.client,
                                     "--socket",
                                     d->socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  std::string Run(int uid, int gid, std::vector<std::string> args) const {
    std::string out, err;
    testing::Run(As(uid, gid, std::move(args)), &out, &err);
    return out.empty() ? "(no output) " + err : out;
  }
};

}  // namespace

TEST_CASE("only members of the socket's group can connect", "[security]") {
  SecureDaemon s;
  struct stat st;
  REQUIRE(::stat(s.d->socket().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
  CHECK(st.st_gid == static_cast<gid_t>(kGroup));
  // Refused by the socket's permissions, and told so (not "no daemon").
  const std::string outsider = s.Run(kOutsider, kOutsider, {"map", "shared"});
  CHECK_THAT(outsider, Catch::StartsWith("ERR PERMISSION_DENIED"));
  CHECK_THAT(outsider, Catch::Contains("members of the group"));
  CHECK_THAT(s.Run(kUserA, kGroup, {"map", "shared"}), Catch::StartsWith("OK mapped 8192 bytes"));
}

TEST_CASE("members read committed segments but cannot write them or list the directory", "[security]") {
  SecureDaemon s;
  std::string segment = s.d->segment_dir() + "/" + s.model_digest + ".seg";
  struct stat st;
  REQUIRE(::stat(segment.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0440);
  CHECK(st.st_gid == static_cast<gid_t>(kGroup));  // the daemon's own group is root's: it hands files to the group
  CHECK_THAT(s.Run(kUserA, kGroup, {"open-write", segment}), Catch::StartsWith("ERR EACCES"));
  CHECK_THAT(s.Run(kUserA, kGroup, {"list-dir", s.d->segment_dir()}), Catch::StartsWith("ERR EACCES"));
  CHECK_THAT(s.Run(kOutsider, kOutsider, {"open-write", segment}), Catch::StartsWith("ERR EACCES"));
}

TEST_CASE("a staging model belongs to the user who created it", "[security]") {
  SecureDaemon s;
  Child creator(s.As(kUserA, kGroup, {"create", "--hold"}));
  auto [id, path] = Created(creator.ReadLine());
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_gid == static_cast<gid_t>(kGroup));  // the publisher, a member, can write it

  CHECK_THAT(s.Run(kUserB, kGroup, {"commit", id}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  CHECK_THAT(s.Run(kUserB, kGroup, {"abort", id}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  CHECK_THAT(s.Run(kUserA, kGroup, {"abort", id}), Catch::StartsWith("OK aborted"));
  CHECK(creator.Finish() == 0);
  CHECK(::access(path.c_str(), F_OK) != 0);
}

TEST_CASE("a staging file linked out of the segment directory keeps no bytes once aborted", "[security]") {
  // The attack: a member hard-links their staging file to a directory of
  // theirs and aborts; the bytes used to stay on the tmpfs, outside every
  // budget.
  SecureDaemon s;
  testing::TempDir elsewhere("/dev/shm");
  ::chmod(elsewhere.path().c_str(), 01777);
  Child creator(s.As(kUserA, kGroup, {"create", "--hold"}));
  auto [id, path] = Created(creator.ReadLine());
  const std::string stolen = elsewhere.path() + "/stolen";
  REQUIRE_THAT(s.Run(kUserA, kGroup, {"link", path, stolen}), Catch::StartsWith("OK linked"));
  REQUIRE(StatOf(stolen).st_size == 4096);
  REQUIRE_THAT(s.Run(kUserA, kGroup, {"abort", id}), Catch::StartsWith("OK aborted"));
  CHECK(creator.Finish() == 0);
  const struct stat after = StatOf(stolen);
  REQUIRE(after.st_size == 0);
  REQUIRE(after.st_blocks == 0);
}

TEST_CASE("admin calls are refused to users the config does not name", "[security]") {
  SecureDaemon s;
  CHECK_THAT(s.Run(kUserA, kGroup, {"delete", "shared"}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  CHECK_THAT(s.Run(kUserA, kGroup, {"pin", "shared"}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  // A new name is anyone's to give; moving an existing one is an admin's.
  CHECK_THAT(s.Run(kUserA, kGroup, {"tag", "alias", "shared"}), Catch::StartsWith("OK tagged"));
  auto other = testing::MakeModel(1, 512, 9);
  auto info = s.d->NewClient()->Publish(other.source);
  REQUIRE(info.ok());
  CHECK_THAT(s.Run(kUserA, kGroup, {"tag", "shared", info->digest()}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  // Root (uid 0, listed) may.
  CHECK(s.d->NewClient()->Delete("shared").ok());
}

}  // namespace zerocopy

namespace zerocopy {
namespace {

// zerocopyd started with `args` and `failpoint` in its environment, its
// output in a log file; what a test needs of a daemon that may refuse to
// start.
struct Launch {
  testing::TempDir logs;
  pid_t pid = -1;
  explicit Launch(std::vector<std::string> args, const std::string& failpoint = "") {
    args.insert(args.begin(), {testing::DaemonBinary(), "--metrics-address", "off"});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = logs.path() + "/log";
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      if (!failpoint.empty()) ::setenv("ZEROCOPYD_FAILPOINT", failpoint.c_str(), 1);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Launch() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  // The exit status once it exits within `timeout`, else -1 (still running).
  int WaitExit(std::chrono::milliseconds timeout) {
    int status = 0;
    bool exited = testing::WaitUntil([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, timeout);
    if (!exited) return -1;
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string log() const {
    std::ifstream in(logs.path() + "/log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

}  // namespace

TEST_CASE("a socket directory a member owns is refused before the socket can be swapped for a symlink", "[security]") {
  // The attack: a member of the group creates the socket's directory first;
  // between the daemon's bind() and its chown/chmod of the socket (a
  // failpoint holds it there), they put a symlink to a root file in the
  // socket's place; the root daemon then gave that file to the group, 0660.
  testing::TempDir base;
  ::chmod(base.path().c_str(), 0755);
  const std::string dir = base.path() + "/run";
  REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
  REQUIRE(::chown(dir.c_str(), kUserA, kGroup) == 0);
  const std::string victim = base.path() + "/shadow";
  std::ofstream(victim) << "root:secret\n";
  REQUIRE(::chmod(victim.c_str(), 0600) == 0);
  const std::string socket = dir + "/zerocopyd.sock", hold = base.path() + "/hold";
  std::ofstream(hold) << "";
  testing::TempDir shm("/dev/shm");
  testing::TempDir conf;
  std::ofstream(conf.path() + "/c.toml") << "socket_group = \"" << kGroup << "\"\nsegment_group = \"" << kGroup
                                         << "\"\n";
  Launch daemon({"--socket", socket, "--segment-dir", shm.path() + "/segments", "--config", conf.path() + "/c.toml"},
                "listen:bound:hold=" + hold);
  struct stat st {};
  bool bound = testing::WaitUntil([&] { return ::lstat(socket.c_str(), &st) == 0; }, std::chrono::seconds(5));
  if (bound) {
    // What the directory's owner can do: swap the socket for a symlink.
    const std::string link = dir + "/.swap";
    REQUIRE(::symlink(victim.c_str(), link.c_str()) == 0);
    REQUIRE(::rename(link.c_str(), socket.c_str()) == 0);
  }
  ::unlink(hold.c_str());
  const int status = daemon.WaitExit(std::chrono::seconds(10));
  const struct stat after = StatOf(victim);
  CHECK((after.st_mode & 07777) == 0600);
  CHECK(after.st_gid == 0);
  REQUIRE_FALSE(bound);
  REQUIRE(status != 0);
  REQUIRE(status != -1);
  REQUIRE_THAT(daemon.log(), Catch::Contains("socket directory " + dir + " belongs to uid " + std::to_string(kUserA)));
}

TEST_CASE("a socket or segment directory others may write is refused", "[security]") {
  testing::TempDir base;
  ::chmod(base.path().c_str(), 0755);
  testing::TempDir shm("/dev/shm");
  const std::string sockdir = base.path() + "/run", segdir = shm.path() + "/segments";
  SECTION("socket directory writable by the group") {
    REQUIRE(::mkdir(sockdir.c_str(), 0775) == 0);
    ::chmod(sockdir.c_str(), 0775);
    Launch daemon({"--socket", sockdir + "/s.sock", "--segment-dir", segdir});
    REQUIRE(daemon.WaitExit(std::chrono::seconds(10)) > 0);
    REQUIRE_THAT(daemon.log(), Catch::Contains("is writable by its group"));
  }
  SECTION("segment directory writable by everyone") {
    REQUIRE(::mkdir(sockdir.c_str(), 0755) == 0);
    REQUIRE(::mkdir(segdir.c_str(), 0777) == 0);
    ::chmod(segdir.c_str(), 0777);
    Launch daemon({"--socket", sockdir + "/s.sock", "--segment-dir", segdir});
    REQUIRE(daemon.WaitExit(std::chrono::seconds(10)) > 0);
    REQUIRE_THAT(daemon.log(), Catch::Contains("is writable by everyone"));
    REQUIRE((StatOf(segdir).st_mode & 07777) == 0777);  // left as found
  }
}

TEST_CASE("a segment directory a member created first, or a symlink, is refused and left alone", "[security]") {
  testing::TempDir base;
  ::chmod(base.path().c_str(), 0755);
  testing::TempDir shm("/dev/shm");
  ::chmod(shm.path().c_str(), 01777);  // as /dev/shm is
  const std::string segdir = shm.path() + "/zerocopy";
  SECTION("created first by a member, who would list it and rename files over segments") {
    REQUIRE(::mkdir(segdir.c_str(), 0777) == 0);
    REQUIRE(::chown(segdir.c_str(), kUserA, kUserA) == 0);
    ::chmod(segdir.c_str(), 0777);
    Launch daemon({"--socket", base.path() + "/s.sock", "--segment-dir", segdir});
    REQUIRE(daemon.WaitExit(std::chrono::seconds(10)) > 0);
    REQUIRE_THAT(daemon.log(),
                 Catch::Contains("segment directory " + segdir + " belongs to uid " + std::to_string(kUserA)));
    REQUIRE(StatOf(segdir).st_uid == static_cast<uid_t>(kUserA));
    REQUIRE(testing::ListDir(segdir).empty());
  }
  SECTION("a symlink to a directory of root's") {
    const std::string target = base.path() + "/etc";
    REQUIRE(::mkdir(target.c_str(), 0755) == 0);
    ::chmod(target.c_str(), 0755);
    REQUIRE(::symlink(target.c_str(), segdir.c_str()) == 0);
    Launch daemon({"--socket", base.path() + "/s.sock", "--segment-dir", segdir});
    REQUIRE(daemon.WaitExit(std::chrono::seconds(10)) > 0);
    REQUIRE_THAT(daemon.log(), Catch::Contains("is a symlink or not a directory"));
    REQUIRE((StatOf(target).st_mode & 07777) == 0755);
    REQUIRE(testing::ListDir(target).empty());  // no .lock, nothing
  }
}

}  // namespace zerocopy

namespace zerocopy {

TEST_CASE("a name stays with the user who made it, even after its model is evicted", "[security]") {
  // The attack: wait until the victim's unpinned model is evicted (its
  // names used to vanish with it), then publish under the freed name.
  SecureDaemon s("tmpfs_reserve = 0\n", "12K", /*shared=*/false);  // room for three 4 KiB models
  DaemonProcess& d = *s.d;
  auto as = [&](int uid, std::vector<std::string> args) { return s.Run(uid, kGroup, std::move(args)); };
  const std::string victim = as(kUserA, {"publish", "llama", "1"});
  REQUIRE_THAT(victim, Catch::StartsWith("OK "));
  auto listed = d.NewClient()->List();
  REQUIRE(listed->models(0).publisher_uid() == static_cast<uint32_t>(kUserA));
  // While it is there, another member cannot move the name ...
  REQUIRE_THAT(as(kUserB, {"publish", "llama", "2"}),
               Catch::Contains("PERMISSION_DENIED") && Catch::Contains("belongs to uid " + std::to_string(kUserA)));
  // ... nor once three publishes of theirs have evicted the victim's model.
  for (const char* seed : {"3", "4", "5"}) REQUIRE_THAT(as(kUserB, {"publish", "", seed}), Catch::StartsWith("OK "));
  REQUIRE(d.NewClient()->Stats()->evictions() >= 1);
  auto gone = d.NewClient()->Get("llama");
  REQUIRE(gone.status().code() == absl::StatusCode::kNotFound);
  REQUIRE_THAT(std::string(gone.status().message()),
               Catch::Contains("no longer on this node: evicted; republish or preload it") &&
                   Catch::Contains("belongs to uid " + std::to_string(kUserA)));
  REQUIRE_THAT(as(kUserB, {"publish", "llama", "6"}), Catch::Contains("PERMISSION_DENIED"));
  REQUIRE_THAT(as(kUserB, {"tag", "llama", victim.substr(3, 32)}), Catch::StartsWith("ERR "));
  REQUIRE_THAT(as(kUserB, {"delete", "llama"}), Catch::Contains("PERMISSION_DENIED"));
  // The name survives a restart, still the victim's.
  d.Stop(SIGKILL);
  d.Start();
  REQUIRE_THAT(as(kUserB, {"publish", "llama", "7"}), Catch::Contains("PERMISSION_DENIED"));
  // Its owner may republish under it (or remove it); an admin may move it.
  REQUIRE_THAT(as(kUserA, {"publish", "llama", "8"}), Catch::StartsWith("OK "));
  auto back = d.NewClient()->Get("llama");
  REQUIRE(back.ok());
  REQUIRE(back->model().publisher_uid() == static_cast<uint32_t>(kUserA));
}

TEST_CASE("what one member may cost the daemon before committing anything is bounded", "[security]") {
  // The attacks: empty CreateModel requests by the thousand (a file each),
  // uncommitted models held for ever, manifests of a million tensors.
  SecureDaemon s("max_staging_per_uid = 3\nmax_tensors = 8\nmax_staging_manifest_bytes_per_uid = \"4K\"\n", "1G",
                 /*shared=*/false);
  DaemonProcess& d = *s.d;
  auto as = [&](int uid, std::vector<std::string> args) { return s.As(uid, kGroup, std::move(args)); };
  auto run = [&](int uid, std::vector<std::string> args) { return s.Run(uid, kGroup, std::move(args)); };
  auto staging = [&] { return StagingFiles(d); };

  SECTION("an empty manifest is refused, and leaves no file") {
    REQUIRE_THAT(run(kUserA, {"create", "--empty"}),
                 Catch::StartsWith("ERR INVALID_ARGUMENT") && Catch::Contains("the manifest is empty"));
    REQUIRE(staging() == 0);
  }
  SECTION("a uid holds at most max_staging_per_uid uncommitted models; others are still served") {
    std::vector<std::unique_ptr<Child>> held;
    for (int i = 0; i < 3; ++i) {
      held.push_back(std::make_unique<Child>(as(kUserA, {"create", "--hold"})));
      REQUIRE_THAT(held.back()->ReadLine(), Catch::StartsWith("OK "));
    }
    REQUIRE_THAT(run(kUserA, {"create"}),
                 Catch::StartsWith("ERR RESOURCE_EXHAUSTED") && Catch::Contains("max_staging_per_uid"));
    Child other(as(kUserB, {"create", "--hold"}));
    REQUIRE_THAT(other.ReadLine(), Catch::StartsWith("OK "));
    REQUIRE(staging() == 4);
  }
  SECTION("a manifest of more than max_tensors tensors is refused") {
    auto model = testing::MakeModel(9, 16, 1);
    auto refused = d.NewClient()->Publish(model.source);
    REQUIRE(refused.status().code() == absl::StatusCode::kInvalidArgument);
    REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("max_tensors"));
    REQUIRE(d.NewClient()->Publish(testing::MakeModel(8, 16, 1).source).ok());
  }
  SECTION("the manifests one uid keeps staged are bounded in bytes") {
    auto model = testing::MakeModel(1, 16, 2);
    model.source.manifest.set_metadata(std::string(5000, 'm'));  // a manifest of 5 KB
    auto refused = d.NewClient()->Publish(model.source);
    REQUIRE(refused.status().code() == absl::StatusCode::kResourceExhausted);
    REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains("max_staging_manifest_bytes_per_uid"));
    model.source.manifest.set_metadata(std::string(1000, 'm'));
    REQUIRE(d.NewClient()->Publish(model.source).ok());
  }
}

TEST_CASE("an uncommitted model nobody writes is dropped after staging_idle_seconds", "[security]") {
  // Its own daemon: with an idle time this short, a slow machine (TSan)
  // would drop the staging models the other limits' tests hold.
  SecureDaemon s("staging_idle_seconds = 1.0\n", "1G", /*shared=*/false);
  DaemonProcess& d = *s.d;
  auto as = [&](int uid, std::vector<std::string> args) { return s.As(uid, kGroup, std::move(args)); };
  auto run = [&](int uid, std::vector<std::string> args) { return s.Run(uid, kGroup, std::move(args)); };
  auto staging = [&] { return StagingFiles(d); };
  Child idle(as(kUserA, {"create", "--hold"}));
  std::string line = idle.ReadLine();
  REQUIRE_THAT(line, Catch::StartsWith("OK "));
  const std::string id = line.substr(3, 32);
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  Child next(as(kUserB, {"create", "--hold"}));  // any CreateModel reclaims what expired
  REQUIRE_THAT(next.ReadLine(), Catch::StartsWith("OK "));
  REQUIRE(staging() == 1);
  REQUIRE_THAT(run(kUserA, {"abort", id}), Catch::StartsWith("ERR NOT_FOUND"));
}

TEST_CASE("a member opening connections without end cannot lock others out", "[security]") {
  // The attack: thousands of connections that send half an HTTP/2 preface
  // and stay, until the daemon runs out of descriptors and every other
  // user's calls fail.
  SecureDaemon s("max_connections_per_uid = 8\n");
  DaemonProcess& d = *s.d;
  auto as = [&](int uid, std::vector<std::string> args) { return s.As(uid, kGroup, std::move(args)); };
  Child flood(as(kUserA, {"connections", "40", "8"}));
  REQUIRE_THAT(flood.ReadLine(), Catch::StartsWith("OK 8 open of 40"));
  // Another member is served meanwhile; so is root.
  std::string out, err;
  testing::Run(as(kUserB, {"map", "shared"}), &out, &err);
  REQUIRE_THAT(out, Catch::StartsWith("OK mapped"));
  REQUIRE(d.NewClient()->Stats().ok());
  REQUIRE_THAT(d.log(), Catch::Contains("connection refused: uid " + std::to_string(kUserA)));
  // Closed connections no longer count: once the flood ends, that member is served again.
  REQUIRE(flood.Finish() == 0);
  out.clear();
  testing::Run(as(kUserA, {"map", "shared"}), &out, &err);
  REQUIRE_THAT(out, Catch::StartsWith("OK mapped"));
}

TEST_CASE("connections that never finish the handshake, or stay idle, are closed", "[security]") {
  // Within its cap a member could still hold descriptors for ever with
  // connections that stop half way through the HTTP/2 preface (gRPC's own
  // handshake deadline does not cover connections handed to it by
  // descriptor) or that finish it and then never call.
  SecureDaemon s("handshake_timeout_seconds = 1.0\nconnection_idle_seconds = 1.0\n");
  DaemonProcess& d = *s.d;
  auto flood = [&](const std::string& kind) {
    std::string out, err;
    testing::Run(s.As(kUserA, kGroup, {"connections", "8", "0", kind}), &out, &err);
    return out;
  };
  SECTION("half a preface") { REQUIRE_THAT(flood("half"), Catch::StartsWith("OK 0 open of 8")); }
  SECTION("something that is not HTTP/2") { REQUIRE_THAT(flood("junk"), Catch::StartsWith("OK 0 open of 8")); }
  SECTION("a whole preface, then nothing") { REQUIRE_THAT(flood("full"), Catch::StartsWith("OK 0 open of 8")); }
  SECTION("a client quiet for longer than the idle time is still served, and keeps its lease") {
    auto client = d.NewClient();
    auto mapped = client->Map("shared");
    REQUIRE(mapped.ok());
    ::usleep(2500 * 1000);
    auto list = client->List();
    REQUIRE(list.ok());
    REQUIRE(list->models(0).leases() == 1);
    ::usleep(2500 * 1000);
    REQUIRE(d.NewClient()->List()->models(0).leases() == 1);
  }
}

// Not under the sanitizers: their allocators keep freed memory on purpose.
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
TEST_CASE("the memory a refused huge manifest took is given back", "[security]") {
  // The attack: manifests of a million tensors, refused (past max_tensors)
  // or left uncommitted, each cost ~150 MB to parse; eight left the daemon
  // at 2.8 GB that it never returned.
  SecureDaemon s("", "1G", /*shared=*/false);
  DaemonProcess& d = *s.d;
  auto stub = v1::ModelStore::NewStub(grpc::CreateChannel("unix:" + d.socket(), grpc::InsecureChannelCredentials()));
  v1::CreateModelRequest request;
  request.mutable_manifest()->add_storages()->set_size(4);
  for (int i = 0; i < 1000000; ++i) {
    v1::Tensor* t = request.mutable_manifest()->add_tensors();
    t->set_name("t" + std::to_string(i));
    t->set_dtype(v1::F32);
    t->add_shape(1);
  }
  const int64_t rss_before = testing::SmapsRollup(d.pid(), "Rss");
  for (int i = 0; i < 8; ++i) {
    grpc::ClientContext ctx;
    v1::CreateModelResponse response;
    grpc::Status st = stub->CreateModel(&ctx, request, &response);
    INFO(st.error_message());
    REQUIRE(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    REQUIRE_THAT(st.error_message(), Catch::Contains("max_tensors"));
  }
  // Given back shortly after, not at once: allow the daemon a few seconds.
  int64_t rss_after = 0;
  testing::WaitUntil([&] { return (rss_after = testing::SmapsRollup(d.pid(), "Rss")) < rss_before + (64 << 20); },
                     std::chrono::seconds(10));
  INFO("Rss before " << (rss_before >> 20) << " MiB, after " << (rss_after >> 20) << " MiB");
  REQUIRE(rss_after < rss_before + (64 << 20));  // within 64 MiB of where it was
  REQUIRE(d.NewClient()->Stats().ok());
}
#endif

}  // namespace zerocopy

namespace zerocopy {

// The race: a commit checked that its caller may move the name, let go of
// the registry's lock, and set the name in a second hold; another user who
// created the name in between had it pointed at the first user's weights.
// The failpoint holds the commit just before its name is settled (where
// the gap was), for each order of a second user's TagModel around it.
TEST_CASE("a commit never points another user's name at its model, whenever that user takes the name",
          "[security][names]") {
  testing::TempDir holds;
  const std::string hold = holds.path() + "/hold";
  SecureDaemon s("", "1G", /*shared=*/false, {"ZEROCOPYD_FAILPOINT=commit:naming:hold=" + hold});
  DaemonProcess& d = *s.d;
  auto run = [&](int uid, std::vector<std::string> args) { return s.Run(uid, kGroup, std::move(args)); };
  // B's own model, published before any commit is held.
  const std::string b_model = run(kUserB, {"publish", "", "2"});
  REQUIRE_THAT(b_model, Catch::StartsWith("OK "));
  const std::string b_digest = b_model.substr(3, 32);
  auto named = [&](const std::string& name) {
    auto got = d.NewClient()->Get(name);
    REQUIRE(got.ok());
    return std::make_pair(got->model().digest(), got->model().publisher_uid());
  };

  SECTION("B takes the name while A's commit is held before naming: A's commit is refused") {
    { std::ofstream(hold) << "held"; }
    Child a(s.As(kUserA, kGroup, {"publish", "llama", "1"}));
    testing::WaitUntil([&] { return std::filesystem::exists(hold + ".reached"); }, std::chrono::seconds(30));
    REQUIRE(std::filesystem::exists(hold + ".reached"));
    REQUIRE_THAT(run(kUserB, {"tag", "llama", b_digest}), Catch::StartsWith("OK tagged"));
    std::filesystem::remove(hold);
    const std::string out = a.ReadLine();
    a.Finish();
    CHECK_THAT(out,
               Catch::Contains("PERMISSION_DENIED") && Catch::Contains("belongs to uid " + std::to_string(kUserB)));
    CHECK(named("llama").first == b_digest);  // still where its owner set it
    // And still B's: A cannot move it afterwards either.
    CHECK_THAT(run(kUserA, {"publish", "llama", "3"}), Catch::Contains("PERMISSION_DENIED"));
    CHECK(named("llama").first == b_digest);
  }
  SECTION("B takes the name before A commits: A's commit is refused") {
    REQUIRE_THAT(run(kUserB, {"tag", "llama", b_digest}), Catch::StartsWith("OK tagged"));
    CHECK_THAT(run(kUserA, {"publish", "llama", "1"}), Catch::Contains("PERMISSION_DENIED"));
    CHECK(named("llama").first == b_digest);
  }
  SECTION("A's commit names first: B's TagModel is refused") {
    const std::string a_model = run(kUserA, {"publish", "llama", "1"});
    REQUIRE_THAT(a_model, Catch::StartsWith("OK "));
    CHECK_THAT(run(kUserB, {"tag", "llama", b_digest}), Catch::Contains("PERMISSION_DENIED"));
    CHECK(named("llama").first == a_model.substr(3, 32));
    CHECK(named("llama").second == static_cast<uint32_t>(kUserA));
  }
}

}  // namespace zerocopy
