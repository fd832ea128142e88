#include "manifest_cache.h"

#include "absl/strings/str_cat.h"

namespace zerocopy {

absl::StatusOr<std::shared_ptr<const v1::Manifest>> ManifestCache::Parse(const std::string& digest,
                                                                        const std::string& bytes) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(digest); it != entries_.end() && it->second.bytes == bytes) {
      ++hits_;
      return it->second.manifest;
    }
  }
  // Outside the lock: a manifest of many tensors takes milliseconds.
  auto manifest = std::make_shared<v1::Manifest>();
  if (!manifest->ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("the daemon's manifest of model ", digest, " (", bytes.size(),
                                            " bytes) does not parse"));
  }
  absl::MutexLock lock(&mu_);
  ++parses_;
  if (bytes.size() > max_bytes_) return manifest;  // never kept
  if (auto it = entries_.find(digest); it != entries_.end()) {
    bytes_ -= it->second.bytes.size();
    entries_.erase(it);
  }
  if (bytes_ + bytes.size() > max_bytes_) {
    entries_.clear();
    bytes_ = 0;
  }
  bytes_ += bytes.size();
  entries_.emplace(digest, Entry{bytes, manifest});
  return manifest;
}

size_t ManifestCache::parses() const {
  absl::MutexLock lock(&mu_);
  return parses_;
}

size_t ManifestCache::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

}  // namespace zerocopy
