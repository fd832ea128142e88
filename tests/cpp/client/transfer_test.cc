// Transfers between nodes' daemons (Client::Receive, IncomingModel): the
// bytes of a model known by digest written into a staging model claimed
// for that digest, committed only if they hash to it. The Python package
// drives these through Ray (tests/python/test_cluster.py); here two real
// daemons stand for two nodes.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include <catch2/catch.hpp>

#include "support.h"
#include "zerocopy/client.h"
#include "zerocopy/digest.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy {
namespace {

using testing::DaemonProcess;
using testing::MakeModel;
using testing::TestModel;

std::vector<std::string> StagingFiles(const DaemonProcess& d) {
  std::vector<std::string> found;
  for (const auto& f : testing::ListDir(d.segment_dir())) {
    if (f.rfind("staging-", 0) == 0) found.push_back(f);
  }
  return found;
}

// A model published on `source`, and its manifest as the source's daemon
// lays it out.
struct Published {
  std::string digest;
  v1::Manifest manifest;
  std::shared_ptr<MappedModel> mapped;
};

Published PublishOn(const DaemonProcess& source, const TestModel& model) {
  auto client = source.NewClient();
  auto info = client->Publish(model.source);
  REQUIRE(info.ok());
  auto got = client->Get(info->digest());
  REQUIRE(got.ok());
  auto mapped = client->Map(info->digest());
  REQUIRE(mapped.ok());
  return {info->digest(), got->manifest(), *mapped};
}

// Writes the source's segment into `incoming` in chunks of `chunk` bytes,
// last chunk first (order must not matter).
void CopyInChunks(IncomingModel& incoming, const MappedModel& from, uint64_t chunk) {
  REQUIRE(incoming.size() == from.size());
  std::vector<uint64_t> offsets;
  for (uint64_t o = 0; o < from.size(); o += chunk) offsets.push_back(o);
  for (auto it = offsets.rbegin(); it != offsets.rend(); ++it) {
    REQUIRE(incoming.Write(*it, from.data() + *it, std::min(chunk, from.size() - *it)).ok());
  }
}

// Two nodes' daemons: `a` holds the model published on it, `b` receives.
struct TwoNodes {
  DaemonProcess a, b;
  Published p;
  explicit TwoNodes(const TestModel& model) {
    a.Start();
    b.Start();
    p = PublishOn(a, model);
  }
};

v1::Origin Pulled(const std::string& from) {
  v1::Origin origin;
  origin.set_kind("pulled");
  origin.set_source(from);
  origin.set_duration_ms(42);
  return origin;
}

TEST_CASE("a model received by digest commits under that digest and says where it came from", "[transfer]") {
  TwoNodes nodes(MakeModel(4, 300000, 11));  // ~4.6 MiB
  DaemonProcess& b = nodes.b;
  const Published& p = nodes.p;
  auto client = b.NewClient();
  auto incoming = client->Receive(p.manifest, p.digest);
  REQUIRE(incoming.ok());
  REQUIRE(StagingFiles(b).size() == 1);
  CopyInChunks(**incoming, *p.mapped, 1 << 20);
  auto info = (*incoming)->Commit(Pulled("node A"));
  REQUIRE(info.ok());
  REQUIRE(info->digest() == p.digest);
  REQUIRE(info->origin().kind() == "pulled");
  REQUIRE(StagingFiles(b).empty());

  auto mapped = client->Map(p.digest);
  REQUIRE(mapped.ok());
  REQUIRE((*mapped)->ComputeDigest() == p.digest);
  REQUIRE(std::memcmp((*mapped)->data(), p.mapped->data(), p.mapped->size()) == 0);
  auto stats = client->Stats();
  REQUIRE(stats->pulls() == 1);
  REQUIRE(stats->bytes_pulled() == p.mapped->size());

  // Here already: a second transfer is refused before any byte moves.
  auto again = client->Receive(p.manifest, p.digest);
  REQUIRE(again.status().code() == absl::StatusCode::kAlreadyExists);
  REQUIRE_THAT(std::string(again.status().message()), Catch::Contains("already on this node"));

  // The origin is kept across a restart, and `zerocopy ls` shows it.
  b.Stop(SIGKILL);
  b.Start();
  auto list = b.NewClient()->List();
  REQUIRE(list.ok());
  REQUIRE(list->models_size() == 1);
  REQUIRE(list->models(0).origin().source() == "node A");
  REQUIRE(list->models(0).origin().duration_ms() == 42);
  std::string out;
  REQUIRE(testing::Run({testing::CliBinary(), "--socket", b.socket(), "ls"}, &out) == 0);
  REQUIRE_THAT(out, Catch::Contains("pulled from node A in 0.04 s"));
}

TEST_CASE("one transfer of a digest at a time, and an abort or a dead claimant frees it", "[transfer]") {
  TwoNodes nodes(MakeModel(2, 1000, 12));
  DaemonProcess& b = nodes.b;
  const Published& p = nodes.p;
  auto client = b.NewClient();

  SECTION("a second claim waits for the first to end") {
    auto first = client->Receive(p.manifest, p.digest);
    REQUIRE(first.ok());
    auto second = b.NewClient()->Receive(p.manifest, p.digest);
    REQUIRE(second.status().code() == absl::StatusCode::kAlreadyExists);
    REQUIRE_THAT(std::string(second.status().message()), Catch::Contains("being transferred"));
    first->reset();  // aborted: the staging file goes, the digest is free
    REQUIRE(StagingFiles(b).empty());
    auto third = client->Receive(p.manifest, p.digest);
    REQUIRE(third.ok());
  }
  SECTION("the claim of a process that died is reclaimed by the next claimant") {
    testing::Child holder({TEST_CLIENT_BIN, "--socket", b.socket(), "create", "--expect", p.digest, "--hold"});
    REQUIRE_THAT(holder.ReadLine(), Catch::StartsWith("OK "));
    auto refused = client->Receive(p.manifest, p.digest);
    REQUIRE(refused.status().code() == absl::StatusCode::kAlreadyExists);
    REQUIRE_THAT(std::string(refused.status().message()), Catch::Contains(std::to_string(holder.pid())));
    ::kill(holder.pid(), SIGKILL);
    holder.Finish();  // reaped: the pid is gone
    auto taken = client->Receive(p.manifest, p.digest);
    REQUIRE(taken.ok());
    REQUIRE(StagingFiles(b).size() == 1);  // ours; the dead one's file went
    CopyInChunks(**taken, *p.mapped, 4096);
    REQUIRE((*taken)->Commit(Pulled("node A")).ok());
  }
  REQUIRE(b.NewClient()->Stats()->bytes_staging() == 0);
}

TEST_CASE("a transfer whose bytes are not the expected digest commits nothing", "[transfer]") {
  TwoNodes nodes(MakeModel(3, 5000, 13));
  DaemonProcess& b = nodes.b;
  const Published& p = nodes.p;
  auto client = b.NewClient();
  auto incoming = client->Receive(p.manifest, p.digest);
  REQUIRE(incoming.ok());
  CopyInChunks(**incoming, *p.mapped, 8192);
  uint8_t flipped = p.mapped->data()[100] ^ 0xFF;
  REQUIRE((*incoming)->Write(100, &flipped, 1).ok());
  auto info = (*incoming)->Commit(Pulled("node A"));
  REQUIRE(info.status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(client->List()->models_size() == 0);
  REQUIRE(StagingFiles(b).empty());
  REQUIRE(client->Stats()->bytes_staging() == 0);
  // Used up: no write or commit after it.
  REQUIRE((*incoming)->Write(0, &flipped, 1).code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("bad transfers are refused precisely", "[transfer]") {
  TwoNodes nodes(MakeModel(1, 1000, 14));
  DaemonProcess& b = nodes.b;
  const Published& p = nodes.p;
  auto client = b.NewClient();
  REQUIRE(client->Receive(p.manifest, "not-a-digest").status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(client->Receive(p.manifest, std::string(32, 'G')).status().code() == absl::StatusCode::kInvalidArgument);
  v1::Manifest wrong_size = p.manifest;
  wrong_size.set_total_size(p.manifest.total_size() + 64);
  REQUIRE(client->Receive(wrong_size, p.digest).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(StagingFiles(b).empty());

  auto incoming = client->Receive(p.manifest, p.digest);
  REQUIRE(incoming.ok());
  uint8_t byte = 0;
  REQUIRE((*incoming)->Write((*incoming)->size(), &byte, 1).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE((*incoming)->Write(UINT64_MAX, &byte, 2).code() == absl::StatusCode::kInvalidArgument);
  v1::Origin huge;
  huge.set_kind("pulled");
  huge.set_source(std::string(5000, 'x'));
  CopyInChunks(**incoming, *p.mapped, 4096);
  REQUIRE((*incoming)->Commit(huge).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(StagingFiles(b).empty());
  REQUIRE(client->List()->models_size() == 0);
}

TEST_CASE("the daemon checks a transfer's expected digest itself", "[transfer]") {
  // Raw requests (test_client), as a client other than ours would send them.
  DaemonProcess d;
  d.Start();
  std::string out;
  testing::Run({TEST_CLIENT_BIN, "--socket", d.socket(), "create", "--expect", "not-a-digest"}, &out);
  REQUIRE_THAT(out, Catch::StartsWith("ERR INVALID_ARGUMENT") && Catch::Contains("expected_digest"));
  // A claim for digest X whose bytes (all zeros) hash to something else:
  // refused with the transfer's reason, nothing kept.
  const std::string expected(32, 'a');
  out.clear();
  REQUIRE(testing::Run({TEST_CLIENT_BIN, "--socket", d.socket(), "create", "--expect", expected}, &out) == 0);
  const std::string id = out.substr(3, 32);
  out.clear();
  testing::Run({TEST_CLIENT_BIN, "--socket", d.socket(), "commit", id}, &out);
  REQUIRE_THAT(out,
               Catch::StartsWith("ERR INVALID_ARGUMENT") && Catch::Contains("not to " + expected + " as expected"));
  REQUIRE(StagingFiles(d).empty());
  REQUIRE(d.NewClient()->List()->models_size() == 0);
  REQUIRE(d.NewClient()->Stats()->pulls() == 0);
}

TEST_CASE("a preload from a path of any characters records where it came from", "[transfer]") {
  DaemonProcess d;
  d.Start();
  testing::TempDir dir;
  const std::string path = dir.path() + "/mod\xc3\xa8le \x01.safetensors";
  testing::WriteSafetensors(MakeModel(1, 100, 15), path);
  std::string out, err;
  REQUIRE(testing::Run({testing::CliBinary(), "--socket", d.socket(), "preload", path}, &out, &err) == 0);
  auto list = d.NewClient()->List();
  REQUIRE(list->models_size() == 1);
  const auto& origin = list->models(0).origin();
  REQUIRE(origin.kind() == "preloaded");
  REQUIRE(origin.source() == dir.path() + "/mod\xc3\xa8le ?.safetensors");  // UTF-8 kept, control character replaced
}

}  // namespace
}  // namespace zerocopy

namespace zerocopy {
namespace {

TEST_CASE("a model's leaf digests come with it and check every chunk of a transfer before it is written",
          "[transfer]") {
  TwoNodes nodes(MakeModel(3, 2 << 20, 15));  // 24 MiB: six leaves
  DaemonProcess& b = nodes.b;
  const Published& p = nodes.p;
  // The source's daemon keeps the leaves it hashed at commit; they and the
  // manifest make the digest, so a receiver needs to trust only that.
  auto got = nodes.a.NewClient()->Get(p.digest, /*with_leaves=*/true);
  REQUIRE(got.ok());
  REQUIRE(got->leaves().size() == DigestLeafCount(p.mapped->size()) * kLeafBytes);
  auto leaves = DecodeLeaves(got->leaves(), p.mapped->size());
  REQUIRE(leaves.ok());
  REQUIRE(CombineDigest(*leaves, p.manifest) == p.digest);
  CHECK(nodes.a.NewClient()->Get(p.digest)->leaves().empty());  // only when asked

  auto client = b.NewClient();
  auto incoming = client->Receive(p.manifest, p.digest);
  REQUIRE(incoming.ok());
  IncomingModel& in = **incoming;
  CHECK_THAT(in.path(), Catch::StartsWith(b.segment_dir() + "/staging-"));
  // Leaves that are not the model's (one flipped bit) are refused.
  std::string forged = got->leaves();
  forged[3] ^= 0x10;
  CHECK(in.SetLeaves(forged).code() == absl::StatusCode::kDataLoss);
  CHECK(in.SetLeaves(got->leaves().substr(16)).code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(in.SetLeaves(got->leaves()).ok());

  // An altered chunk is refused whole: not one byte of it reaches the file.
  std::vector<uint8_t> chunk(p.mapped->data() + kDigestChunk, p.mapped->data() + 3 * kDigestChunk);
  chunk[kDigestChunk + 7] ^= 0xFF;
  absl::Status refused = in.Write(kDigestChunk, chunk.data(), chunk.size());
  CHECK(refused.code() == absl::StatusCode::kDataLoss);
  CHECK_THAT(std::string(refused.message()), Catch::Contains("leaf 2 of 6"));
  {
    std::vector<uint8_t> on_disk(chunk.size());
    UniqueFd fd(::open(in.path().c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(fd);
    REQUIRE(::pread(fd.get(), on_disk.data(), on_disk.size(), kDigestChunk) == static_cast<ssize_t>(on_disk.size()));
    CHECK(std::all_of(on_disk.begin(), on_disk.end(), [](uint8_t v) { return v == 0; }));
  }
  // Less than a leaf is refused once leaves are set.
  CHECK(in.Write(0, p.mapped->data(), 4096).code() == absl::StatusCode::kInvalidArgument);

  // The right bytes, one chunk per thread at once, then the commit.
  std::vector<std::thread> writers;
  std::atomic<int> failed{0};
  for (uint64_t off = 0; off < p.mapped->size(); off += 2 * kDigestChunk) {
    writers.emplace_back([&, off] {
      const uint64_t n = std::min<uint64_t>(2 * kDigestChunk, p.mapped->size() - off);
      if (!in.Write(off, p.mapped->data() + off, n).ok()) ++failed;
    });
  }
  for (auto& t : writers) t.join();
  REQUIRE(failed == 0);
  auto info = in.Commit(Pulled("node A"));
  REQUIRE(info.ok());
  CHECK(info->digest() == p.digest);
  // The receiver's daemon has the leaves too (a relay serves from it), and
  // keeps them across a restart.
  CHECK(client->Get(p.digest, true)->leaves() == got->leaves());
  b.Stop(SIGKILL);
  b.Start();
  CHECK(b.NewClient()->Get(p.digest, true)->leaves() == got->leaves());
}

TEST_CASE("a model whose record predates leaf digests gets them hashed on first request", "[transfer]") {
  testing::TempDir config_dir;
  const std::string config = config_dir.path() + "/zerocopyd.toml";
  std::ofstream(config) << "verify_on_start = false\n";  // recovery then reads the record as it is
  DaemonProcess::Options options;
  options.extra_args = {"--config", config};
  DaemonProcess d(options);
  d.Start();
  auto model = MakeModel(2, 1 << 20, 16);  // 8 MiB: two leaves
  auto info = d.NewClient()->Publish(model.source);
  REQUIRE(info.ok());
  const std::string expected = d.NewClient()->Get(info->digest(), true)->leaves();
  REQUIRE(!expected.empty());
  d.Stop(SIGKILL);
  // The record as a daemon before leaf digests wrote it.
  const std::string record_path = d.segment_dir() + "/" + info->digest() + ".manifest";
  v1::ModelRecord record;
  {
    std::ifstream in(record_path, std::ios::binary);
    REQUIRE(record.ParseFromString(std::string(std::istreambuf_iterator<char>(in), {})));
  }
  REQUIRE(!record.leaves().empty());
  record.clear_leaves();
  ::chmod(record_path.c_str(), 0640);
  { std::ofstream(record_path, std::ios::binary | std::ios::trunc) << record.SerializeAsString(); }
  ::chmod(record_path.c_str(), 0440);
  d.Start();
  CHECK(d.NewClient()->Get(info->digest(), true)->leaves() == expected);
  CHECK(d.NewClient()->Get(info->digest(), true)->leaves() == expected);  // kept from the first
}

}  // namespace
}  // namespace zerocopy
