#include "staging_table.h"

#include <catch2/catch.hpp>

namespace zerocopy::daemon {
namespace {

Peer User(uid_t uid, pid_t pid = 100) {
  Peer p;
  p.pid = pid;
  p.uid = uid;
  p.known = true;
  return p;
}

Staging Make(const std::string& id, uid_t uid, uint64_t size, uint64_t manifest_bytes = 100) {
  Staging s;
  s.id = id;
  s.peer = User(uid);
  s.manifest.set_total_size(size);
  s.manifest_bytes = manifest_bytes;
  return s;
}

TEST_CASE("staging models count their bytes until removed", "[staging]") {
  StagingTable table;
  table.Add(Make("a", 1, 100));
  table.Add(Make("b", 2, 50));
  CHECK(table.bytes() == 150);
  REQUIRE(table.Find("a") != nullptr);
  table.Remove("a");
  table.Remove("a");  // twice: no-op
  table.Remove("unknown");
  CHECK(table.bytes() == 50);
  CHECK(table.Find("a") == nullptr);
}

TEST_CASE("each limit a user may reach is refused by name", "[staging]") {
  StagingTable table;
  StagingLimits limits;
  limits.per_uid = 2;
  limits.bytes_per_uid = 1000;
  limits.manifest_bytes_per_uid = 500;
  table.Add(Make("a", 1, 400, 200));
  CHECK(table.CheckQuota(User(1), 600, 100, limits).ok());
  auto bytes = table.CheckQuota(User(1), 601, 100, limits);
  CHECK(bytes.code() == absl::StatusCode::kResourceExhausted);
  CHECK_THAT(std::string(bytes.message()), Catch::Contains("max_staging_bytes_per_uid"));
  auto manifests = table.CheckQuota(User(1), 1, 301, limits);
  CHECK_THAT(std::string(manifests.message()), Catch::Contains("max_staging_manifest_bytes_per_uid"));
  table.Add(Make("b", 1, 1, 1));
  auto count = table.CheckQuota(User(1), 1, 1, limits);
  CHECK_THAT(std::string(count.message()), Catch::Contains("max_staging_per_uid"));
  CHECK(table.CheckQuota(User(2), 1000, 500, limits).ok());  // another user's are their own
}

TEST_CASE("a transfer is found by its expected digest", "[staging]") {
  StagingTable table;
  Staging t = Make("t", 1, 10);
  t.expected_digest = std::string(32, 'c');
  table.Add(std::move(t));
  table.Add(Make("u", 1, 10));
  REQUIRE(table.TransferOf(std::string(32, 'c')) != nullptr);
  CHECK(table.TransferOf(std::string(32, 'c'))->id == "t");
  CHECK(table.TransferOf(std::string(32, 'd')) == nullptr);
  CHECK(table.TransferOf("") == nullptr);
}

TEST_CASE("reclaiming skips a model being committed", "[staging]") {
  StagingTable table;
  table.Add(Make("a", 1, 10));
  table.Add(Make("b", 1, 20));
  table.Find("b")->committing = true;
  auto removed = table.RemoveIf([](const Staging&) { return true; });
  CHECK(removed == std::vector<std::string>{"a"});
  CHECK(table.bytes() == 20);
  CHECK(table.Find("b") != nullptr);
}

}  // namespace
}  // namespace zerocopy::daemon
