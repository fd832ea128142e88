// ManifestCache: the manifests a client has parsed, by model digest.
//
// A digest covers its model's manifest (digest.h), so a client that holds
// a digest's manifest lists it in its GetModel requests and the daemon
// leaves it out of the answer (Find). A manifest that does arrive is
// parsed once: bytes equal to those seen before for the same digest get
// the manifest parsed then (the bytes are compared, not assumed).
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <deque>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

class ManifestCache {
 public:
  // Bounds the bytes kept (the serialized manifests; parsed ones take a few
  // times that): past it, the cache starts over.
  explicit ManifestCache(size_t max_bytes = size_t{64} << 20) : max_bytes_(max_bytes) {}

  // The manifest `bytes` (serialized, as the daemon sent it for model
  // `digest`) hold: parsed now, or the one parsed from equal bytes before.
  // DATA_LOSS when they do not parse.
  absl::StatusOr<std::shared_ptr<const v1::Manifest>> Parse(const std::string& digest, const std::string& bytes);

  // The manifest held for `digest`, or null.
  std::shared_ptr<const v1::Manifest> Find(const std::string& digest);
  // Keeps `manifest` as the one of `digest` (read by the caller from a
  // source it trusts as much as the daemon: the sealed manifest file).
  void Insert(const std::string& digest, std::shared_ptr<const v1::Manifest> manifest);
  // The digests held, most recently used first, at most `n`.
  std::vector<std::string> Recent(size_t n) const;

  // Parses done and answers from the cache (tests).
  size_t parses() const;
  size_t hits() const;

 private:
  struct Entry {
    std::string bytes;  // as the daemon sent them; empty for Insert's
    std::shared_ptr<const v1::Manifest> manifest;
    size_t cost = 0;  // what it counts against the bound
  };
  // Keeps `entry` for `digest`, within the bound, as the most recent.
  void KeepLocked(const std::string& digest, Entry entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TouchLocked(const std::string& digest) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const size_t max_bytes_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::string> recent_ ABSL_GUARDED_BY(mu_);  // digests held, most recently used first
  size_t parses_ ABSL_GUARDED_BY(mu_) = 0;
  size_t hits_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace zerocopy
