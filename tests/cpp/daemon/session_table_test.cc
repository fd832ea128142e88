#include "session_table.h"

#include <set>

#include <catch2/catch.hpp>

namespace zerocopy::daemon {
namespace {

TEST_CASE("sessions count leases per model, first and last told apart", "[sessions]") {
  SessionTable table;
  Peer peer;
  peer.pid = 9;
  peer.uid = 1000;
  peer.known = true;
  const uint64_t id = table.Open(peer, 1234);
  REQUIRE(id != 0);
  Session* s = table.Find(id);
  REQUIRE(s != nullptr);
  CHECK(s->opened_ms == 1234);
  CHECK(SessionTable::Take(*s, "m"));        // first
  CHECK_FALSE(SessionTable::Take(*s, "m"));  // second
  CHECK(SessionTable::Give(*s, "m").value() == false);
  CHECK(SessionTable::Give(*s, "m").value() == true);  // last
  auto none = SessionTable::Give(*s, "m");
  CHECK(none.status().code() == absl::StatusCode::kNotFound);

  SessionTable::Take(*s, "m");
  SessionTable::Take(*s, "n");
  table.ForgetModel("n");
  v1::GetStatsResponse stats;
  table.Describe(&stats);
  REQUIRE(stats.sessions_size() == 1);
  CHECK(stats.sessions(0).leases() == 1);
  CHECK(stats.sessions(0).pid() == 9);

  auto closed = table.Close(id);
  REQUIRE(closed.has_value());
  CHECK(closed->leases.count("m") == 1);
  CHECK(table.Find(id) == nullptr);
  CHECK_FALSE(table.Close(id).has_value());
}

TEST_CASE("session ids are distinct, non-zero and fit in 60 bits", "[sessions]") {
  SessionTable table;
  std::set<uint64_t> ids;
  for (int i = 0; i < 1000; ++i) {
    uint64_t id = table.Open(Peer{}, 0);
    CHECK(id != 0);
    CHECK(id < (uint64_t{1} << 60));
    ids.insert(id);
  }
  CHECK(ids.size() == 1000);
}

}  // namespace
}  // namespace zerocopy::daemon
