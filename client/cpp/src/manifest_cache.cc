#include "manifest_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace zerocopy {

absl::StatusOr<std::shared_ptr<const v1::Manifest>> ManifestCache::Parse(const std::string& digest,
                                                                         const std::string& bytes) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(digest); it != entries_.end() && it->second.bytes == bytes) {
      ++hits_;
      TouchLocked(digest);
      return it->second.manifest;
    }
  }
  // Outside the lock: a manifest of many tensors takes milliseconds.
  auto manifest = std::make_shared<v1::Manifest>();
  if (!manifest->ParseFromString(bytes)) {
    return absl::DataLossError(
        absl::StrCat("the daemon's manifest of model ", digest, " (", bytes.size(), " bytes) does not parse"));
  }
  absl::MutexLock lock(&mu_);
  ++parses_;
  KeepLocked(digest, Entry{bytes, manifest, bytes.size()});
  return manifest;
}

std::shared_ptr<const v1::Manifest> ManifestCache::Find(const std::string& digest) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(digest);
  if (it == entries_.end()) return nullptr;
  ++hits_;
  TouchLocked(digest);
  return it->second.manifest;
}

void ManifestCache::Insert(const std::string& digest, std::shared_ptr<const v1::Manifest> manifest) {
  const size_t cost = manifest->ByteSizeLong();
  absl::MutexLock lock(&mu_);
  KeepLocked(digest, Entry{"", std::move(manifest), cost});
}

std::vector<std::string> ManifestCache::Recent(size_t n) const {
  absl::MutexLock lock(&mu_);
  return std::vector<std::string>(recent_.begin(), recent_.begin() + std::min(n, recent_.size()));
}

void ManifestCache::KeepLocked(const std::string& digest, Entry entry) {
  if (auto it = entries_.find(digest); it != entries_.end()) {
    bytes_ -= it->second.cost;
    entries_.erase(it);
    if (auto r = std::find(recent_.begin(), recent_.end(), digest); r != recent_.end()) recent_.erase(r);
  }
  if (entry.cost > max_bytes_) return;  // never kept
  if (bytes_ + entry.cost > max_bytes_) {
    entries_.clear();
    recent_.clear();
    bytes_ = 0;
  }
  bytes_ += entry.cost;
  entries_.emplace(digest, std::move(entry));
  recent_.push_front(digest);
}

void ManifestCache::TouchLocked(const std::string& digest) {
  if (!recent_.empty() && recent_.front() == digest) return;
  if (auto r = std::find(recent_.begin(), recent_.end(), digest); r != recent_.end()) recent_.erase(r);
  recent_.push_front(digest);
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
