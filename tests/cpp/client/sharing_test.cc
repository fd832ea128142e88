// Sharing across real processes: several map_worker processes map one
// model; the kernel's own accounting (PSS of the segment mapping in
// /proc/PID/smaps) shows one copy, copy-on-write keeps writes private, and
// a process killed with -9 gives its lease back.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "support.h"

namespace zerocopy {
namespace {

using testing::Child;
using testing::DaemonProcess;

struct MappingMemory {
  int64_t rss = 0;
  int64_t pss = 0;
  int64_t private_dirty = 0;
};

// Memory of every mapping of `path` in process `pid`, from /proc/PID/smaps.
MappingMemory SegmentMemory(pid_t pid, const std::string& path) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  MappingMemory m;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') < 17) {
      inside = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
      continue;
    }
    if (!inside) continue;
    std::istringstream fields(line);
    std::string key;
    int64_t kb = 0;
    fields >> key >> kb;
    if (key == "Rss:")
      m.rss += kb * 1024;
    else if (key == "Pss:")
      m.pss += kb * 1024;
    else if (key == "Private_Dirty:")
      m.private_dirty += kb * 1024;
  }
  return m;
}

struct Published {
  testing::TempDir dir;
  std::string file;
  v1::ModelInfo info;
};

void Publish(const DaemonProcess& d, int tensors, size_t floats_each, Published* out) {
  auto model = testing::MakeModel(tensors, floats_each, 21);
  out->file = out->dir.path() + "/m.safetensors";
  testing::WriteSafetensors(model, out->file);
  PublishOptions options;
  options.name = "shared";
  auto info = d.NewClient()->Publish(model.source, options);
  REQUIRE(info.ok());
  out->info = *info;
}

TEST_CASE("four processes share one copy of the weights", "[sharing]") {
  DaemonProcess d;
  d.Start();
  Published p;
  Publish(d, 8, 2u << 20, &p);  // 64 MiB
  const auto size = static_cast<int64_t>(p.info.size());

  std::vector<std::unique_ptr<Child>> mapped, private_readers;
  std::vector<nlohmann::json> reports;
  for (int i = 0; i < 4; ++i) {
    mapped.push_back(std::make_unique<Child>(
        std::vector<std::string>{testing::MapWorkerBinary(), "--socket", d.socket(), "--model", "shared", "--hold"}));
    reports.push_back(nlohmann::json::parse(mapped.back()->ReadLine()));
  }
  for (int i = 0; i < 4; ++i) {
    private_readers.push_back(
        std::make_unique<Child>(std::vector<std::string>{testing::MapWorkerBinary(), "--file", p.file, "--hold"}));
    reports.push_back(nlohmann::json::parse(private_readers.back()->ReadLine()));
  }
  for (const auto& r : reports) REQUIRE(r["checksum"] == reports[0]["checksum"]);

  // Each mapper has every page of the segment resident; their PSS for it
  // adds up to one copy.
  int64_t segment_pss = 0, mapped_total = 0, private_total = 0;
  for (const auto& c : mapped) {
    MappingMemory m = SegmentMemory(c->pid(), p.info.segment_path());
    INFO("pid " << c->pid() << " rss " << m.rss << " pss " << m.pss);
    REQUIRE(m.rss >= size - 4096);
    REQUIRE(m.private_dirty == 0);
    segment_pss += m.pss;
    mapped_total += testing::SmapsRollup(c->pid(), "Pss");
  }
  for (const auto& c : private_readers) private_total += testing::SmapsRollup(c->pid(), "Pss");
  INFO("segment PSS " << segment_pss << " of " << size << "; process PSS mapped " << mapped_total << " private "
                      << private_total);
  REQUIRE(segment_pss >= size * 95 / 100);
  REQUIRE(segment_pss <= size * 105 / 100);
  // Whole processes: 4 private readers hold four copies; 4 mappers one
  // copy plus the same code and libraries, so at least two copies less.
  REQUIRE(private_total >= 4 * size);
  REQUIRE(mapped_total < private_total - 2 * size);
  for (auto& c : mapped) REQUIRE(c->Finish() == 0);
  for (auto& c : private_readers) REQUIRE(c->Finish() == 0);
}

TEST_CASE("a write into a mapped weight stays in the writer's process", "[sharing]") {
  DaemonProcess d;
  d.Start();
  Published p;
  Publish(d, 2, 1u << 16, &p);
  auto argv =
      std::vector<std::string>{testing::MapWorkerBinary(), "--socket", d.socket(), "--model", "shared", "--hold"};
  Child before(argv);
  auto original = nlohmann::json::parse(before.ReadLine());
  auto scribble_argv = argv;
  scribble_argv.push_back("--scribble");
  Child scribbler(scribble_argv);
  auto scribbled = nlohmann::json::parse(scribbler.ReadLine());
  Child after(argv);
  auto later = nlohmann::json::parse(after.ReadLine());

  REQUIRE(scribbled["checksum"] != original["checksum"]);
  REQUIRE(later["checksum"] == original["checksum"]);
  REQUIRE(SegmentMemory(scribbler.pid(), p.info.segment_path()).private_dirty >= 4096);
  REQUIRE(SegmentMemory(after.pid(), p.info.segment_path()).private_dirty == 0);
  REQUIRE(scribbler.Finish() == 0);
  // The segment itself is unchanged: the CLI's verify recomputes its digest.
  std::string out;
  REQUIRE(testing::Run({testing::CliBinary(), "--socket", d.socket(), "verify", "shared"}, &out) == 0);
  REQUIRE(before.Finish() == 0);
  REQUIRE(after.Finish() == 0);
}

int Leases(const DaemonProcess& d) {
  auto list = d.NewClient()->List();
  REQUIRE(list.ok());
  REQUIRE(list->models_size() == 1);
  return static_cast<int>(list->models(0).leases());
}

TEST_CASE("a process killed with -9 gives its lease back", "[sharing]") {
  DaemonProcess d;
  d.Start();
  Published p;
  Publish(d, 1, 1024, &p);
  std::vector<std::string> argv = {testing::MapWorkerBinary(), "--socket", d.socket(), "--model", "shared", "--hold"};
  Child a(argv), b(argv);
  REQUIRE_FALSE(a.ReadLine().empty());
  REQUIRE_FALSE(b.ReadLine().empty());
  REQUIRE(Leases(d) == 2);
  ::kill(a.pid(), SIGKILL);
  REQUIRE(a.Finish() == 128 + SIGKILL);
  testing::WaitUntil([&] { return Leases(d) == 1; }, std::chrono::seconds(1));
  REQUIRE(Leases(d) == 1);
  REQUIRE(b.Finish() == 0);
  testing::WaitUntil([&] { return Leases(d) == 0; }, std::chrono::seconds(1));
  REQUIRE(Leases(d) == 0);
}

TEST_CASE("a forked child keeps its mappings and refuses the parent's client", "[sharing]") {
  DaemonProcess d;
  d.Start();
  auto model = testing::MakeModel(2, 1000, 22);
  auto client = d.NewClient();
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  auto mapped = client->Map(info->digest());
  REQUIRE(mapped.ok());
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Exit codes say which check failed; no Catch macros in the child.
    auto view = (*mapped)->Find("layer.0.weight");
    if (!view.ok() || std::memcmp(view->data, model.buffers[0].data(), view->extent) != 0) _exit(1);
    auto list = client->List();
    if (list.status().code() != absl::StatusCode::kFailedPrecondition) _exit(2);
    _exit(0);
  }
  int status;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(client->List().ok());  // the parent's client still works
}

}  // namespace
}  // namespace zerocopy
