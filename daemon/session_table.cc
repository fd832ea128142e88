#include "session_table.h"

#include <sys/random.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace zerocopy::daemon {

uint64_t SessionTable::Open(const Peer& peer, int64_t now_ms) {
  uint64_t id = 0;
  while (id == 0 || sessions_.count(id)) {
    if (::getrandom(&id, sizeof id, 0) != sizeof id) continue;
    id >>= 4;  // 60 bits: exact in a double (JSON, Python)
  }
  Session& s = sessions_[id];
  s.id = id;
  s.peer = peer;
  s.opened_ms = now_ms;
  return id;
}

std::optional<Session> SessionTable::Close(uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return std::nullopt;
  Session s = std::move(it->second);
  sessions_.erase(it);
  return s;
}

Session* SessionTable::Find(uint64_t id) {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : &it->second;
}

bool SessionTable::Take(Session& session, const std::string& digest) { return session.leases[digest]++ == 0; }

absl::StatusOr<bool> SessionTable::Give(Session& session, const std::string& digest) {
  auto lease = session.leases.find(digest);
  if (lease == session.leases.end()) {
    return absl::NotFoundError(absl::StrCat("session ", session.id, " holds no lease on ", digest));
  }
  if (--lease->second > 0) return false;
  session.leases.erase(lease);
  return true;
}

void SessionTable::ForgetModel(const std::string& digest) {
  for (auto& [id, session] : sessions_) session.leases.erase(digest);
}

void SessionTable::Describe(v1::GetStatsResponse* stats) const {
  std::vector<const Session*> sorted;
  for (const auto& [id, s] : sessions_) sorted.push_back(&s);
  std::sort(sorted.begin(), sorted.end(), [](const Session* a, const Session* b) { return a->id < b->id; });
  for (const Session* s : sorted) {
    auto* info = stats->add_sessions();
    info->set_id(s->id);
    info->set_pid(s->peer.pid);
    info->set_uid(s->peer.uid);
    info->set_gid(s->peer.gid);
    info->set_leases(static_cast<uint32_t>(s->leases.size()));
    info->set_opened_unix_ms(s->opened_ms);
  }
}

}  // namespace zerocopy::daemon
