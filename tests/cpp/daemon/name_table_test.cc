#include "name_table.h"

#include <catch2/catch.hpp>

namespace zerocopy::daemon {
namespace {

Peer User(uid_t uid) {
  Peer p;
  p.pid = 100;
  p.uid = uid;
  p.gid = 100;
  p.known = true;
  return p;
}

const std::string kA(32, 'a'), kB(32, 'b');
const AdminPolicy kNoAdmins({}, {});

TEST_CASE("a name belongs to the user who created it", "[names]") {
  NameTable names;
  const AdminPolicy admins({}, {42});  // gid 42 administers
  REQUIRE_FALSE(names.Set("llama", kA, User(1000), admins)->has_value());
  REQUIRE(*names.Find("llama") == kA);
  REQUIRE(names.Owner("llama") == 1000u);
  CHECK(names.CheckMayMove("llama", User(1000), admins).ok());
  CHECK(names.CheckMayMove("llama", User(0), admins).ok());
  Peer admin = User(1001);
  admin.gid = 42;
  CHECK(names.CheckMayMove("llama", admin, admins).ok());
  absl::Status other = names.CheckMayMove("llama", User(1001), admins);
  CHECK(other.code() == absl::StatusCode::kPermissionDenied);
  CHECK_THAT(std::string(other.message()), Catch::Contains("belongs to uid 1000"));
  // Moving it keeps its owner; a name nobody has is anyone's to create.
  REQUIRE(*names.Set("llama", kB, User(0), admins) == kA);
  CHECK(names.Owner("llama") == 1000u);
  // Setting checks as CheckMayMove does, in the same step: another user's
  // set is refused and changes nothing; re-pointing at the same digest is
  // no move.
  auto refused = names.Set("llama", kA, User(1001), admins);
  CHECK(refused.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(*names.Find("llama") == kB);
  CHECK(names.Owner("llama") == 1000u);
  CHECK(names.Set("llama", kB, User(1001), admins).ok());
  CHECK(names.CheckMayMove("free", User(1001), admins).ok());
}

TEST_CASE("a name without an owner is anyone's without admins, only theirs with", "[names]") {
  v1::CatalogFile old;  // written before owners were kept
  (*old.mutable_tags())["legacy"] = kA;
  NameTable names;
  names.Load(old);
  CHECK_FALSE(names.Owner("legacy").has_value());
  CHECK(names.CheckMayMove("legacy", User(1001), AdminPolicy({}, {})).ok());
  CHECK(names.CheckMayMove("legacy", User(1001), AdminPolicy({0}, {})).code() == absl::StatusCode::kPermissionDenied);
}

TEST_CASE("undoing a set restores the name, or removes a new one with its owner", "[names]") {
  NameTable names;
  auto previous = names.Set("x", kA, User(7), kNoAdmins);
  names.Undo("x", *previous);
  CHECK(names.Find("x") == nullptr);
  CHECK_FALSE(names.Owner("x").has_value());
  REQUIRE(names.Set("x", kA, User(7), kNoAdmins).ok());
  previous = names.Set("x", kB, User(7), kNoAdmins);
  names.Undo("x", *previous);
  CHECK(*names.Find("x") == kA);
  CHECK(names.Owner("x") == 7u);
}

TEST_CASE("names round-trip through the catalog, malformed ones dropped", "[names]") {
  NameTable names;
  REQUIRE(names.Set("one", kA, User(5), kNoAdmins).ok());
  REQUIRE(names.Set("two", kA, User(6), kNoAdmins).ok());
  REQUIRE(names.Set("three", kB, User(5), kNoAdmins).ok());
  CHECK(names.NamesOf(kA) == std::vector<std::string>{"one", "two"});
  v1::CatalogFile catalog;
  names.Save(&catalog);
  (*catalog.mutable_tags())["bad name!"] = kA;
  (*catalog.mutable_tags())["short"] = "abc";
  (*catalog.mutable_tag_owners())["nameless"] = 9;
  NameTable loaded;
  loaded.Load(catalog);
  CHECK(loaded.NamesOf(kA) == std::vector<std::string>{"one", "two"});
  CHECK(loaded.Find("bad name!") == nullptr);
  CHECK(loaded.Find("short") == nullptr);
  CHECK_FALSE(loaded.Owner("nameless").has_value());
  CHECK(loaded.Owner("three") == 5u);
  loaded.RemoveNamesOf(kA);
  CHECK(loaded.NamesOf(kA).empty());
  CHECK_FALSE(loaded.Owner("one").has_value());
  CHECK(loaded.Find("three") != nullptr);
}

}  // namespace
}  // namespace zerocopy::daemon
