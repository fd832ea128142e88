// ManifestCache: the manifests a client has parsed, by model digest.
//
// A model's manifest never changes while it lives, so a GetModel answer
// whose manifest bytes equal those seen before for the same digest is
// answered with the manifest parsed then: no parse, no allocation per
// tensor. The bytes are compared, never assumed: a model deleted and
// published again under its digest with other metadata is parsed anew.
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

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

  // Parses done and answers from the cache (tests).
  size_t parses() const;
  size_t hits() const;

 private:
  struct Entry {
    std::string bytes;
    std::shared_ptr<const v1::Manifest> manifest;
  };
  const size_t max_bytes_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t parses_ ABSL_GUARDED_BY(mu_) = 0;
  size_t hits_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace zerocopy
