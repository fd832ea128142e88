// The trust model (SECURITY.md) with real users: the daemon runs as root
// (the suite does) with its socket and segment directory in a test group;
// clients run as unprivileged users through setpriv(1): outside the group,
// in it, and two different users in it.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>

#include "support.h"

namespace zerocopy {
namespace {

using testing::Child;
using testing::DaemonProcess;

constexpr int kGroup = 47123;   // the socket's and segments' group
constexpr int kUserA = 65534;   // nobody
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

struct SecureDaemon {
  testing::TempDir config_dir;
  std::unique_ptr<DaemonProcess> d;
  Programs programs;
  std::string model_digest;

  SecureDaemon() {
    std::string config = config_dir.path() + "/zerocopyd.toml";
    std::ofstream(config) << "socket_group = \"" << kGroup << "\"\nsegment_group = \"" << kGroup
                          << "\"\nadmin_uids = [0]\n";
    DaemonProcess::Options options;
    options.extra_args = {"--config", config};
    d = std::make_unique<DaemonProcess>(options);
    d->Start();
    // The temporary directories holding the socket and the segment
    // directory: traversable by everyone, as /run and /dev/shm are.
    ::chmod(std::filesystem::path(d->socket()).parent_path().c_str(), 0755);
    ::chmod(std::filesystem::path(d->segment_dir()).parent_path().c_str(), 0755);
    auto model = testing::MakeModel(2, 1024, 3);
    PublishOptions publish;
    publish.name = "shared";
    auto info = d->NewClient()->Publish(model.source, publish);
    REQUIRE(info.ok());
    model_digest = info->digest();
  }

  std::vector<std::string> As(int uid, int gid, std::vector<std::string> args) const {
    std::vector<std::string> argv = {"/usr/bin/setpriv", "--reuid=" + std::to_string(uid), "--regid=" + std::to_string(gid),
                                     "--clear-groups", "--", programs.client, "--socket", d->socket()};
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
  CHECK_THAT(s.Run(kOutsider, kOutsider, {"map", "shared"}), Catch::StartsWith("ERR UNAVAILABLE"));
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
  std::string line = creator.ReadLine();
  REQUIRE_THAT(line, Catch::StartsWith("OK "));
  std::string id = line.substr(3, 32);
  std::string path = line.substr(36);
  while (!path.empty() && path.back() == '\n') path.pop_back();
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(st.st_gid == static_cast<gid_t>(kGroup));  // the publisher, a member, can write it

  CHECK_THAT(s.Run(kUserB, kGroup, {"commit", id}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  CHECK_THAT(s.Run(kUserB, kGroup, {"abort", id}), Catch::StartsWith("ERR PERMISSION_DENIED"));
  CHECK_THAT(s.Run(kUserA, kGroup, {"abort", id}), Catch::StartsWith("OK aborted"));
  CHECK(creator.Finish() == 0);
  CHECK(::access(path.c_str(), F_OK) != 0);
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
