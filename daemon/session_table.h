// SessionTable: the clients' sessions (one per Session stream, so one per
// client process) and the host leases each holds. A lease keeps its model
// from eviction; a session's end (its process exiting included) returns
// all of them.
//
// Thread safety: none; the registry's mutex guards it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "peer.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

struct Session {
  uint64_t id = 0;
  Peer peer;
  int64_t opened_ms = 0;
  std::map<std::string, uint32_t> leases;  // digest -> count
};

class SessionTable {
 public:
  // A new session of `peer`, with a random non-zero id.
  uint64_t Open(const Peer& peer, int64_t now_ms);
  // Removes the session and returns it (its leases are the caller's to
  // account for); none if there is no such session.
  std::optional<Session> Close(uint64_t id);
  // Null when there is no such session.
  Session* Find(uint64_t id);

  // One more lease of `digest`: true when it is the session's first on it
  // (the model counts one more leasing session).
  static bool Take(Session& session, const std::string& digest);
  // One lease less: true when it was the session's last on it; NOT_FOUND
  // when it holds none.
  static absl::StatusOr<bool> Give(Session& session, const std::string& digest);

  // Drops every lease on `digest` (its model is gone).
  void ForgetModel(const std::string& digest);
  // Into GetStats, by id.
  void Describe(v1::GetStatsResponse* stats) const;

 private:
  std::unordered_map<uint64_t, Session> sessions_;
};

}  // namespace zerocopy::daemon
