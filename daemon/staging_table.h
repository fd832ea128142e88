// StagingTable: the models being published and not yet committed, each a
// reservation of host budget held by one user, and what one user may hold
// of them at once (max_staging_* in config/zerocopyd.toml).
//
// Thread safety: none; the registry's mutex guards it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "peer.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

struct Staging {
  std::string id;
  v1::Manifest manifest;  // with offsets assigned
  std::string name;       // applied at commit
  bool pin = false;
  Peer peer;
  bool committing = false;
  std::string expected_digest;  // a transfer: see CreateModelRequest
  int64_t created_ms = 0;
  uint64_t manifest_bytes = 0;  // what its manifest costs the daemon to keep
};

struct StagingLimits {
  uint32_t per_uid = 16;
  uint64_t bytes_per_uid = UINT64_MAX;
  uint64_t manifest_bytes_per_uid = 64ull << 20;
};

class StagingTable {
 public:
  // Null when there is no such id.
  Staging* Find(const std::string& id);
  void Add(Staging staging);
  // No-op for an unknown id.
  void Remove(const std::string& id);
  // Bytes reserved by all of them.
  uint64_t bytes() const { return bytes_; }

  // RESOURCE_EXHAUSTED, naming the limit, when `peer` may not reserve one
  // more staging model of `size` bytes whose manifest takes
  // `manifest_bytes` of the daemon's memory.
  absl::Status CheckQuota(const Peer& peer, uint64_t size, uint64_t manifest_bytes, const StagingLimits& limits) const;
  // The staging model transferring `expected_digest`, if any.
  const Staging* TransferOf(const std::string& expected_digest) const;
  // Removes those not being committed for which `drop` is true; returns
  // their ids (their files are the caller's to remove).
  std::vector<std::string> RemoveIf(const std::function<bool(const Staging&)>& drop);

 private:
  std::unordered_map<std::string, Staging> staging_;
  uint64_t bytes_ = 0;
};

}  // namespace zerocopy::daemon
