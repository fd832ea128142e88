// The zerocopy CLI and zerocopyd's own flags, run as programs: exit status
// 0 on success, non-zero with a one-line reason otherwise, and --json that
// parses.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <utility>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support.h"
#include "zerocopy/manifest.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;
using testing::Run;

struct Cli {
  explicit Cli(const DaemonProcess& daemon) : d(daemon) {}
  const DaemonProcess& d;
  std::string out, err;
  int operator()(std::vector<std::string> args) {
    args.insert(args.begin(), {testing::CliBinary(), "--socket", d.socket()});
    return Run(args, &out, &err);
  }
  nlohmann::json Json(std::vector<std::string> args) {
    args.push_back("--json");
    int status = (*this)(args);
    INFO(err);
    REQUIRE(status == 0);
    return nlohmann::json::parse(out);
  }
};

bool OneLine(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

TEST_CASE("preload, ls, inspect, verify, tag, pin and rm", "[cli]") {
  DaemonProcess d;
  d.Start();
  testing::TempDir dir;
  auto model = testing::MakeModel(3, 5000, 31);
  std::string file = dir.path() + "/m.safetensors";
  testing::WriteSafetensors(model, file);
  Cli cli(d);

  REQUIRE(cli({"preload", file, "--name", "m"}) == 0);
  std::string digest = cli.out.substr(0, cli.out.find('\n'));
  REQUIRE(IsDigest(digest));
  // The same digest as publishing the same tensors through the library.
  REQUIRE(cli({"preload", file}) == 0);
  REQUIRE(cli.out.substr(0, 32) == digest);

  auto ls = cli.Json({"ls"});
  REQUIRE(ls["models"].size() == 1);
  REQUIRE(ls["models"][0]["digest"] == digest);
  REQUIRE(ls["models"][0]["names"][0] == "m");
  REQUIRE(cli({"ls"}) == 0);
  REQUIRE_THAT(cli.out, Catch::Contains(digest));

  auto inspect = cli.Json({"inspect", "m"});
  REQUIRE(inspect["manifest"]["tensors"].size() == 3);
  REQUIRE(inspect["model"]["format"] == "safetensors");
  REQUIRE(cli({"inspect", digest}) == 0);
  REQUIRE_THAT(cli.out, Catch::Contains("layer.2.weight"));
  REQUIRE_THAT(cli.out, Catch::Contains("segment:"));

  REQUIRE(cli({"verify", "m"}) == 0);
  REQUIRE(cli.Json({"tag", "alias", "m"})["names"].size() == 2);
  REQUIRE(cli({"pin", "alias"}) == 0);
  REQUIRE(cli({"rm", "m"}) != 0);
  REQUIRE(OneLine(cli.err));
  REQUIRE_THAT(cli.err, Catch::Contains("pinned"));
  REQUIRE(cli({"unpin", digest}) == 0);

  auto stats = cli.Json({"stats"});
  REQUIRE(stats["models"] == "1");
  REQUIRE(stats["metrics_address"] == "");  // the tests' daemons run with metrics off
  REQUIRE(cli({"stats"}) == 0);
  REQUIRE_THAT(cli.out, Catch::Contains("metrics:    off"));
  // The Prometheus text comes through the socket all the same.
  REQUIRE(cli({"stats", "--prometheus"}) == 0);
  REQUIRE_THAT(cli.out, Catch::Contains("# TYPE zerocopy_models gauge\nzerocopy_models 1\n"));
  REQUIRE_THAT(cli.out, Catch::Contains("zerocopy_requests_total{code=\"OK\",method=\"CreateModel\"} 2"));

  REQUIRE(cli({"rm", "alias"}) == 0);
  REQUIRE(cli({"rm", "alias"}) != 0);
  REQUIRE(OneLine(cli.err));
  REQUIRE_THAT(cli.err, Catch::Contains("no model named 'alias'"));
  REQUIRE(cli.Json({"ls"})["models"].size() == 0);
}

TEST_CASE("verify detects a segment altered on disk", "[cli]") {
  DaemonProcess d;
  d.Start();
  testing::TempDir dir;
  auto model = testing::MakeModel(1, 5000, 32);
  std::string file = dir.path() + "/m.safetensors";
  testing::WriteSafetensors(model, file);
  Cli cli(d);
  REQUIRE(cli({"preload", file, "--name", "m"}) == 0);
  auto segment = cli.Json({"inspect", "m"})["model"]["segment_path"].get<std::string>();
  // Segments are read-only (0440); the test runs as root, which may write anyway.
  int fd = ::open(segment.c_str(), O_WRONLY);
  if (fd < 0) FAIL("cannot open the segment for writing as this user; run the suite as root");
  REQUIRE(::pwrite(fd, "X", 1, 100) == 1);
  ::close(fd);
  REQUIRE(cli({"verify", "m"}) != 0);
  REQUIRE_THAT(cli.err + cli.out, Catch::Contains("is corrupt"));
}

TEST_CASE("bad files are refused and publish nothing", "[cli]") {
  DaemonProcess d;
  d.Start();
  testing::TempDir dir;
  Cli cli(d);
  std::string bad = dir.path() + "/bad.safetensors";
  std::ofstream(bad) << "this is not a safetensors file at all";
  REQUIRE(cli({"preload", bad}) != 0);
  REQUIRE(OneLine(cli.err));
  REQUIRE_THAT(cli.err, Catch::Contains(bad));
  REQUIRE(cli({"preload", dir.path() + "/missing.safetensors"}) != 0);
  REQUIRE(OneLine(cli.err));
  auto model = testing::MakeModel(1, 10, 33);
  std::string good = dir.path() + "/good.safetensors";
  testing::WriteSafetensors(model, good);
  REQUIRE(cli({"preload", good, "--name", "../escape"}) != 0);
  REQUIRE(OneLine(cli.err));
  REQUIRE(cli.Json({"ls"})["models"].size() == 0);
  REQUIRE(cli({"frobnicate"}) != 0);
}

TEST_CASE("doctor says what is wrong", "[cli]") {
  DaemonProcess d;
  d.Start();
  Cli cli(d);
  REQUIRE(cli({"doctor"}) == 0);
  REQUIRE_THAT(cli.out, Catch::Contains("daemon answers"));
  // /dev/shm has no huge pages here: a warning with the fix, not a failure.
  REQUIRE_THAT(cli.out, Catch::Contains("warn segments use 4 KiB pages"));
  REQUIRE_THAT(cli.out, Catch::Contains("fix: mount the segment directory as a tmpfs with huge=within_size"));
  d.Stop();
  REQUIRE(cli({"doctor"}) != 0);
  REQUIRE_THAT(cli.out + cli.err, Catch::Contains(d.socket()));
  REQUIRE(cli({"ls"}) != 0);
  REQUIRE(OneLine(cli.err));
  REQUIRE_THAT(cli.err, Catch::Contains(d.socket()));
}

// This process's cgroup directory in the hierarchy that has the memory
// controller, the file that limits it (v1's memory.limit_in_bytes, or v2's
// memory.max) and where that hierarchy is mounted. Empty when neither is
// mounted where we look.
struct MemoryCgroupPaths {
  std::string dir, limit_file, mount;
};
MemoryCgroupPaths MemoryCgroup() {
  std::ifstream in("/proc/self/cgroup");
  for (std::string line; std::getline(in, line);) {
    auto first = line.find(':'), second = line.find(':', first + 1);
    std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    if (controllers == "memory" && ::access("/sys/fs/cgroup/memory", W_OK) == 0) {
      return {"/sys/fs/cgroup/memory" + path, "memory.limit_in_bytes", "/sys/fs/cgroup/memory"};
    }
    if (line.rfind("0::", 0) == 0 && ::access("/sys/fs/cgroup/cgroup.controllers", R_OK) == 0) {
      return {"/sys/fs/cgroup" + path, "memory.max", "/sys/fs/cgroup"};
    }
  }
  return {};
}

// What doctor prints, exiting with `exit_code` (failing by default), for a
// daemon (budget 1G) whose segment directory is on a tmpfs of `size`
// mounted with the further `mount_options` (",opt=...").
std::string DoctorOnTmpfs(const std::string& size, int exit_code = 1, const std::string& mount_options = "") {
  testing::Tmpfs shm(size, mount_options);
  DaemonProcess::Options options;
  options.segment_dir = shm.path();
  DaemonProcess d(options);
  d.Start();
  Cli cli(d);
  REQUIRE(cli({"doctor"}) == exit_code);
  return cli.out;
}

TEST_CASE("output that cannot be written is a failure, not a truncated success", "[cli]") {
  // `zerocopy stats --prometheus > textfile.prom` on a full disk must not
  // exit 0 (the textfile collector's write-then-mv would publish it).
  DaemonProcess d;
  d.Start();
  std::string out, err;
  int status = Run({"/bin/sh", "-c", "exec \"$1\" --socket \"$2\" stats --prometheus > /dev/full", "sh",
                    testing::CliBinary(), d.socket()},
                   &out, &err);
  INFO(err);
  REQUIRE(status == 1);
  REQUIRE_THAT(err, Catch::Contains("writing the output failed"));
}

TEST_CASE("doctor is content with segments on a huge-page tmpfs", "[cli]") {
  // The Debian package's dev-shm-zerocopy.mount, as mount(8) would apply it.
  const std::string out = DoctorOnTmpfs("2G", 0, ",huge=within_size");
  REQUIRE_THAT(out, Catch::Contains("ok   segments are on a tmpfs mounted with huge pages"));
  REQUIRE_THAT(out, !Catch::Contains("warn"));
}

TEST_CASE("doctor catches what bites in containers", "[cli]") {
  SECTION("a container's 64 MiB /dev/shm") {
    std::string out = DoctorOnTmpfs("64m");
    INFO(out);
    REQUIRE_THAT(out, Catch::Contains("FAIL the segment directory is on a file system of 64"));
    REQUIRE_THAT(out, Catch::Contains("a container's default /dev/shm"));
    REQUIRE_THAT(out, Catch::Contains("hostPath"));
  }
  SECTION("a budget larger than the tmpfs") {
    std::string out = DoctorOnTmpfs("256m");
    INFO(out);
    REQUIRE_THAT(out, Catch::Contains("FAIL host budget"));
    REQUIRE_THAT(out, Catch::Contains("exceeds the segment file system's"));
    REQUIRE_THAT(out, Catch::Contains("lower host_budget"));
  }
  SECTION("a memory cgroup smaller than the budget, for a process that publishes") {
    DaemonProcess d;
    d.Start();
    auto [parent, limit_file, mount] = MemoryCgroup();
    if (parent.empty()) {
      WARN("no memory cgroup hierarchy mounted here: the cgroup check is not exercised");
      return;
    }
    const std::string child = parent + "/zerocopy-doctor-" + std::to_string(::getpid());
    REQUIRE(::mkdir(child.c_str(), 0755) == 0);
    // Below the budget (1G), above what the doctor itself needs even under
    // the sanitizers.
    std::ofstream(child + "/" + limit_file) << (512 << 20) << "\n";
    std::string out, err;
    int status = Run({"/bin/sh", "-c", "echo $$ > \"$1\"/cgroup.procs && exec \"$2\" --socket \"$3\" doctor", "sh",
                      child, testing::CliBinary(), d.socket()},
                     &out, &err);
    // As inside a container without a cgroup namespace: the hierarchy is
    // mounted from the container's own cgroup down, while /proc/self/cgroup
    // still names it from the root.
    std::string contained_out, contained_err;
    int contained = Run({"/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                         "echo $$ > \"$1\"/cgroup.procs && mount --bind \"$1\" \"$2\" && "
                         "exec \"$3\" --socket \"$4\" doctor",
                         "sh", child, mount, testing::CliBinary(), d.socket()},
                        &contained_out, &contained_err);
    ::rmdir(child.c_str());
    INFO(out << err);
    REQUIRE(status == 1);
    REQUIRE_THAT(out, Catch::Contains("FAIL this process's memory cgroup allows 512"));
    REQUIRE_THAT(out, Catch::Contains("less than the host budget"));
    REQUIRE_THAT(out, Catch::Contains("loading models is never charged"));
    INFO(contained_out << contained_err);
    REQUIRE(contained == 1);
    REQUIRE_THAT(contained_out, Catch::Contains("FAIL this process's memory cgroup allows 512"));
    // Outside that cgroup the same doctor has nothing to say about memory.
    Cli cli(d);
    REQUIRE(cli({"doctor"}) == 0);
  }
}

TEST_CASE("health is the readiness probe: SERVING while the daemon serves, a reason once it is gone", "[cli]") {
  DaemonProcess d;
  d.Start();
  Cli cli(d);
  REQUIRE(cli({"health"}) == 0);
  REQUIRE(cli.out == "SERVING\n");
  REQUIRE(cli.Json({"health"})["status"] == "SERVING");
  REQUIRE(d.NewClient()->Health().ok());
  d.Stop();
  REQUIRE(cli({"health"}) != 0);
  REQUIRE(OneLine(cli.err));
  REQUIRE_THAT(cli.err, Catch::Contains(d.socket()));
  REQUIRE(absl::IsUnavailable(d.NewClient()->Health()));
}

TEST_CASE("zerocopyd's flags", "[cli]") {
  std::string out, err;
  REQUIRE(Run({testing::DaemonBinary(), "--version"}, &out) == 0);
  REQUIRE_THAT(out, Catch::Contains("0.1.0"));
  REQUIRE(Run({testing::DaemonBinary(), "--print-config", "--host-budget", "8G", "--socket", "/x/y.sock"}, &out) == 0);
  REQUIRE_THAT(out, Catch::Contains("host_budget = 8589934592"));
  REQUIRE_THAT(out, Catch::Contains("socket = '/x/y.sock'"));
  REQUIRE(Run({testing::DaemonBinary(), "--host-budget", "lots", "--print-config"}, &out, &err) != 0);
  REQUIRE_THAT(err, Catch::Contains("--host-budget"));
  REQUIRE(Run({testing::DaemonBinary(), "--config", "/nonexistent.toml", "--print-config"}, &out, &err) != 0);
  REQUIRE_THAT(err, Catch::Contains("/nonexistent.toml"));
  REQUIRE(Run({testing::DaemonBinary(), "--log-level", "chatty", "--print-config"}, &out, &err) != 0);
  REQUIRE(Run({testing::DaemonBinary(), "--metrics-address", "[::1]:0", "--print-config"}, &out) == 0);
  REQUIRE_THAT(out, Catch::Contains("metrics_address = '[::1]:0'"));
  REQUIRE(Run({testing::DaemonBinary(), "--metrics-address", "9479", "--print-config"}, &out, &err) == 2);
  REQUIRE_THAT(err, Catch::Contains("--metrics-address"));
  REQUIRE(Run({testing::DaemonBinary(), "--no-such-flag"}, &out, &err) != 0);
}

}  // namespace
}  // namespace zerocopy
