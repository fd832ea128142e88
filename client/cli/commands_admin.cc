#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "commands.h"

namespace zerocopy::cli {

namespace {

// The readiness probe (deploy/kubernetes): exit 0 when zerocopyd answers
// grpc.health.v1 SERVING on its socket.
int Health(Globals& g) {
  absl::Status status = g.client()->Health();
  if (!status.ok()) return Fail(g, status);
  if (g.json) {
    std::printf("%s\n", nlohmann::json{{"status", "SERVING"}}.dump().c_str());
  } else {
    std::printf("SERVING\n");
  }
  return 0;
}

// --prometheus: the daemon's metrics as its endpoint serves them, for
// node_exporter's textfile collector (deploy/README.md, "Monitoring").
int Stats(Globals& g, bool prometheus) {
  if (prometheus) {
    auto text = g.client()->PrometheusText();
    if (!text.ok()) return Fail(g, text.status());
    std::fwrite(text->data(), 1, text->size(), stdout);
    return 0;
  }
  auto stats = g.client()->Stats();
  if (!stats.ok()) return Fail(g, stats.status());
  if (g.json) {
    PrintJson(*stats);
    return 0;
  }
  const auto& s = *stats;
  std::printf("zerocopyd %s, pid %d, up since %s\n", s.version().c_str(), s.pid(),
              HumanTime(s.started_unix_ms()).c_str());
  std::printf("memory:     %s used of %s budget (%.1f%%), %s being published\n", FormatBytes(s.bytes_used(), 1).c_str(),
              FormatBytes(s.host_budget(), 1).c_str(), s.host_budget() ? 100.0 * s.bytes_used() / s.host_budget() : 0.0,
              FormatBytes(s.bytes_staging(), 1).c_str());
  std::printf("segments:   %s, %s free, huge pages %s\n", s.segment_dir().c_str(),
              FormatBytes(s.segment_dir_free(), 1).c_str(), s.huge_pages() ? "yes" : "no");
  std::printf("models:     %llu\nevictions:  %llu (%s)\npulled:     %llu from other nodes (%s)\nerrors:     %llu\n",
              static_cast<unsigned long long>(s.models()), static_cast<unsigned long long>(s.evictions()),
              FormatBytes(s.bytes_evicted(), 1).c_str(), static_cast<unsigned long long>(s.pulls()),
              FormatBytes(s.bytes_pulled(), 1).c_str(), static_cast<unsigned long long>(s.errors()));
  std::printf("requests:  ");
  for (const auto& [method, count] : s.requests()) {
    if (count) std::printf(" %s=%llu", method.c_str(), static_cast<unsigned long long>(count));
  }
  std::printf("\nsessions:   %d\n", s.sessions_size());
  for (const auto& session : s.sessions()) {
    std::printf("  %016llx  pid %-8d uid %-6u gid %-6u leases %u  since %s\n",
                static_cast<unsigned long long>(session.id()), session.pid(), session.uid(), session.gid(),
                session.leases(), HumanTime(session.opened_unix_ms()).c_str());
  }
  std::string metrics = "off";
  if (!s.metrics_address().empty()) metrics = absl::StrCat("http://", s.metrics_address(), "/metrics");
  if (!s.metrics_error().empty()) metrics = absl::StrCat("not served: ", s.metrics_error());
  std::printf("metrics:    %s\n", metrics.c_str());
  std::printf("gpus:       %s backend, %d with device copies\n", s.gpu_backend().c_str(), s.gpus_size());
  for (const auto& gpu : s.gpus()) {
    std::printf("  %s  %s used of %s budget, %u copies, %u leases, %llu uploads, %llu evictions\n", gpu.uuid().c_str(),
                FormatBytes(gpu.bytes_used(), 1).c_str(), FormatBytes(gpu.budget(), 1).c_str(), gpu.copies(),
                gpu.leases(), static_cast<unsigned long long>(gpu.uploads()),
                static_cast<unsigned long long>(gpu.evictions()));
  }
  return 0;
}

struct Check {
  bool ok;
  std::string what;
  std::string fix;
  bool warn = false;  // ok, but slower than it could be: printed "warn" with the fix
};

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// The memory limit of this process's cgroup, the lowest along its path to
// the root (v2 memory.max, v1 memory.limit_in_bytes), or 0 for none. tmpfs
// pages are charged to the cgroup of the process that writes them: what a
// process publishes or preloads counts against this limit for as long as
// the model exists.
uint64_t CgroupMemoryLimit() {
  // Where each hierarchy is mounted ("cgroup2", or "cgroup" with memory),
  // and which of its cgroups the mount shows at its top (a container's own,
  // without a cgroup namespace).
  struct Mount {
    std::string dir, top;
  } v2, v1;
  std::ifstream mountinfo("/proc/self/mountinfo");
  for (std::string line; std::getline(mountinfo, line);) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || dash + 3 > f.end()) continue;
    const std::string& type = *(dash + 1);
    const std::string& options = *(dash + 3);
    // The last one listed: a mount stacked on another hides it.
    if (type == "cgroup2") v2 = {f[4], f[3]};
    if (type == "cgroup" && absl::StrContains(absl::StrCat(",", options, ","), ",memory,")) v1 = {f[4], f[3]};
  }
  uint64_t lowest = 0;
  auto consider = [&](const Mount& mount, std::string path, const char* file) {
    // /proc/self/cgroup names the cgroup from the hierarchy's root; the
    // mount shows it from `top` down. (Walking up to the mount's top finds
    // a container's limit either way; this finds the ones below it.)
    if (mount.top != "/" && absl::StartsWith(path, mount.top) &&
        (path.size() == mount.top.size() || path[mount.top.size()] == '/')) {
      path = path.substr(mount.top.size());
    }
    if (path.empty()) path = "/";
    const std::string& root = mount.dir;
    for (;;) {
      std::string value = ReadFirstLine(absl::StrCat(root, path == "/" ? "" : path, "/", file).c_str());
      uint64_t limit;
      // "max", v1's "no limit" (a page-rounded INT64_MAX) and unreadable
      // files (a path outside this namespace) limit nothing.
      if (absl::SimpleAtoi(value, &limit) && limit < (uint64_t{1} << 62) && (lowest == 0 || limit < lowest)) {
        lowest = limit;
      }
      if (path == "/" || path.empty()) break;
      path = path.substr(0, path.rfind('/'));
      if (path.empty()) path = "/";
    }
  };
  std::ifstream cgroups("/proc/self/cgroup");
  for (std::string line; std::getline(cgroups, line);) {
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty() && !v2.dir.empty()) consider(v2, f[2], "memory.max");
    if (absl::StrContains(absl::StrCat(",", f[1], ","), ",memory,") && !v1.dir.empty()) {
      consider(v1, f[2], "memory.limit_in_bytes");
    }
  }
  return lowest;
}

int Doctor(Globals& g) {
  std::vector<Check> checks;
  auto client = g.client();
  const std::string& socket = client->socket();
  struct stat st;
  if (::stat(socket.c_str(), &st) != 0) {
    checks.push_back({false, absl::StrCat("socket ", socket, " does not exist"),
                      "start zerocopyd (systemctl start zerocopyd), or point ZEROCOPY_SOCKET / --socket at it"});
  } else if (!S_ISSOCK(st.st_mode)) {
    checks.push_back({false, absl::StrCat(socket, " is not a socket"), "remove it and restart zerocopyd"});
  } else if (::access(socket.c_str(), R_OK | W_OK) != 0) {
    checks.push_back({false, absl::StrCat("no permission to use ", socket),
                      "add this user to the socket's group (usermod -aG zerocopy $USER) and log in again"});
  } else {
    checks.push_back({true, absl::StrCat("socket ", socket, " exists and is usable"), ""});
  }
  auto stats = client->Stats();
  if (!stats.ok()) {
    checks.push_back({false, absl::StrCat("daemon does not answer: ", stats.status().message()),
                      "check `journalctl -u zerocopyd` and restart it"});
  } else {
    checks.push_back({true,
                      absl::StrCat("daemon answers: version ", stats->version(), ", pid ", stats->pid(), ", ",
                                   stats->models(), " models"),
                      ""});
    const std::string& dir = stats->segment_dir();
    struct statvfs vfs;
    if (::stat(dir.c_str(), &st) != 0 || ::statvfs(dir.c_str(), &vfs) != 0) {
      checks.push_back({false, absl::StrCat("segment directory ", dir, " is not reachable from this process"),
                        "clients and the daemon must share /dev/shm (no private /dev or IPC namespace)"});
    } else {
      bool mode_ok = (st.st_mode & 07777) == 0710;
      checks.push_back({mode_ok,
                        absl::StrCat("segment directory ", dir, " mode ", absl::StrFormat("%04o", st.st_mode & 07777)),
                        mode_ok ? "" : "it should be 0710 (zerocopyd sets it at start)"});
      uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      uint64_t total = static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize;
      bool space_ok = free_bytes >= (1ull << 30) || free_bytes * 10 >= total;
      checks.push_back(
          {space_ok,
           absl::StrCat("segment file system: ", FormatBytes(free_bytes, 1), " free of ", FormatBytes(total, 1)),
           space_ok ? ""
                    : "enlarge the tmpfs (mount -o remount,size=... /dev/shm; docker --shm-size) or remove models"});
      const uint64_t budget = stats->host_budget();
      if (total <= (64ull << 20)) {
        // What a container gets for /dev/shm unless told otherwise.
        checks.push_back(
            {false,
             absl::StrCat("the segment directory is on a file system of ", FormatBytes(total, 1),
                          ": a container's default /dev/shm"),
             "give the daemon and every client the host's tmpfs at this path (Kubernetes: a hostPath volume, "
             "deploy/kubernetes; docker: -v /dev/shm/zerocopy:/dev/shm/zerocopy or --ipc=host)"});
      } else if (budget > total + total / 20) {
        // The daemon checks the free space before every publish and evicts
        // for room, so this works; but the budget says what it does not mean.
        checks.push_back({false,
                          absl::StrCat("host budget ", FormatBytes(budget, 1), " exceeds the segment file system's ",
                                       FormatBytes(total, 1)),
                          "lower host_budget to the tmpfs size, or enlarge the tmpfs (mount -o remount,size=... ; "
                          "Kubernetes/docker: the host's tmpfs, not the container's)"});
      }
      if (uint64_t limit = CgroupMemoryLimit(); limit != 0) {
        const bool room = budget == 0 || limit >= budget;
        checks.push_back(
            {room,
             absl::StrCat("this process's memory cgroup allows ", FormatBytes(limit, 1),
                          room ? "" : absl::StrCat(", less than the host budget ", FormatBytes(budget, 1))),
             room ? ""
                  : "a model this process publishes or preloads is charged to its cgroup (tmpfs "
                    "pages count against the writer) for as long as the model exists: raise the "
                    "limit (limits.memory, MemoryMax=) to hold the largest such model, or publish "
                    "from a process with room; loading models is never charged"});
      }
    }
    std::string shmem = ReadFirstLine("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    if (stats->huge_pages()) {
      checks.push_back({true, "segments are on a tmpfs mounted with huge pages", ""});
    } else {
      // Works, but every first read of a mapped model faults 4 KiB at a time.
      checks.push_back(
          {true, absl::StrCat("segments use 4 KiB pages (shmem_enabled: ", shmem.empty() ? "unknown" : shmem, ")"),
           "mount the segment directory as a tmpfs with huge=within_size for ~2x faster first reads: "
           "the Debian package's dev-shm-zerocopy.mount does (systemctl unmask/start it, then restart "
           "zerocopyd), or `mount -t tmpfs -o huge=within_size,mode=0710,uid=zerocopy,gid=zerocopy tmpfs "
           "DIR` while the daemon is stopped (deploy/README.md \"Huge pages\")",
           /*warn=*/true});
    }
  }
  int failures = 0;
  for (const auto& c : checks) {
    if (!c.ok) ++failures;
    if (!g.json) {
      std::printf("%s %s\n", !c.ok ? "FAIL" : c.warn ? "warn" : "ok  ", c.what.c_str());
      if (!c.fix.empty()) std::printf("     %s: %s\n", c.ok && !c.warn ? "hint" : "fix", c.fix.c_str());
    }
  }
  if (g.json) {
    nlohmann::json out = {{"failures", failures}, {"checks", nlohmann::json::array()}};
    for (const auto& c : checks) {
      out["checks"].push_back({{"ok", c.ok}, {"warn", c.warn}, {"what", c.what}, {"fix", c.fix}});
    }
    std::printf("%s\n", out.dump(2).c_str());
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

void AddAdminCommands(CLI::App& app, Globals& g) {
  auto* stats = app.add_subcommand("stats", "bytes used and budget, models, sessions, evictions, requests");
  static bool prometheus = false;
  stats->add_flag("--prometheus", prometheus,
                  "print the daemon's Prometheus metrics (text format, as its metrics endpoint serves them)");
  stats->callback([&] { g.exit_code = Stats(g, prometheus); });
  app.add_subcommand("health", "exit 0 when zerocopyd answers the gRPC health check SERVING (a readiness probe)")
      ->callback([&] { g.exit_code = Health(g); });
  app.add_subcommand("doctor", "check the socket, the segment directory and huge pages, and say what to fix")
      ->callback([&] { g.exit_code = Doctor(g); });
}

}  // namespace zerocopy::cli
