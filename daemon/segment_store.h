// SegmentStore: the segment directory on a tmpfs, and everything that
// touches its files.
//
//   <dir>/.lock                 flock'd by the one daemon serving the directory
//   <dir>/staging-<32 hex>      being written by a publisher (mode 0660)
//   <dir>/<digest>.seg          a committed model's bytes (mode 0440)
//   <dir>/<digest>.manifest     its ModelRecord (protobuf, mode 0440)
//   <dir>/catalog.pb            tags and pins (CatalogFile)
//   <dir>/quarantine/           files that failed verification at start
//
// The directory is mode 0710: group members can open a file whose name they
// were given but cannot list the directory.
//
// Thread safety: all methods may be called concurrently; each touches only
// the files it names (the catalog write is atomic through a rename).
#pragma once

#include <unistd.h>

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/digest.h"
#include "zerocopy/unique_fd.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy::daemon {

class SegmentStore {
 public:
  struct Adopted {
    ::zerocopy::v1::ModelRecord record;
    std::string path;
  };
  struct RecoveryReport {
    std::vector<Adopted> models;
    std::vector<std::string> quarantined;  // file names, with the reason
    size_t staging_removed = 0;
    size_t orphans_removed = 0;
  };

  // Creates the directory if needed (mode 0710, group `gid` unless -1) and
  // takes its exclusive lock. Errors: FAILED_PRECONDITION when another
  // process holds the lock (the message names its pid), INTERNAL /
  // PERMISSION_DENIED from the file system.
  static absl::StatusOr<std::unique_ptr<SegmentStore>> Open(const std::string& dir, gid_t gid);

  const std::string& dir() const { return dir_; }
  // Records in the lock file ("<pid> <socket inode>") that this daemon
  // serves the socket whose inode is `socket_inode`: a client mapping a
  // segment file directly (Client::MapSegment) checks it against the
  // socket it talks to, so that it never takes another daemon's directory,
  // or a dead one's, for its daemon's.
  absl::Status RecordServing(ino_t socket_inode);
  std::string SegmentPath(const std::string& digest) const;
  std::string StagingPath(const std::string& staging_id) const;
  // When the staging file was last written (its mtime), in Unix ms.
  // Errors: NOT_FOUND, INTERNAL.
  absl::StatusOr<int64_t> StagingWrittenMs(const std::string& staging_id) const;

  // Bytes available on the segment file system (statvfs f_bavail).
  absl::StatusOr<uint64_t> FreeBytes() const;
  // The tmpfs is mounted with huge=always/within_size/advise.
  bool huge_pages() const { return huge_pages_; }

  // Creates staging-<id> of exactly `size` bytes, sized, not allocated:
  // its writers write it with pwrite, so a full file system is their
  // write's error (never a fault on a hole). Errors: those of
  // open/ftruncate (RESOURCE_EXHAUSTED when the file system is full).
  absl::Status CreateStaging(const std::string& staging_id, uint64_t size);

  // Opens a staging file for reading after checking it is still `size`
  // bytes and making it read-only (0440). Errors: FAILED_PRECONDITION if
  // the publisher changed its size, NOT_FOUND if it is gone.
  absl::StatusOr<UniqueFd> SealStaging(const std::string& staging_id, uint64_t size);

  // Writes <digest>.manifest, then renames the staging file to
  // <digest>.seg. After this the model survives a daemon crash.
  absl::Status CommitStaging(const std::string& staging_id, const ::zerocopy::v1::ModelRecord& record);

  void RemoveStaging(const std::string& staging_id);
  void RemoveModel(const std::string& digest);

  absl::Status WriteCatalog(const ::zerocopy::v1::CatalogFile& catalog);
  // NOT_FOUND when there is none; DATA_LOSS when it does not parse.
  absl::StatusOr<::zerocopy::v1::CatalogFile> ReadCatalog() const;

  // At start: removes staging leftovers, re-adopts every committed segment
  // whose record parses, whose size matches and (if `verify`) whose digest
  // matches its bytes; moves the rest to quarantine/; removes orphans.
  RecoveryReport Recover(bool verify, unsigned hash_threads);

  // Hashes a sealed segment (no writer left: it cannot shrink under the
  // read-only mapping this reads it through); `leaves`, if given, gets its
  // leaf digests. Errors: DATA_LOSS if the file is shorter than `size`.
  static absl::StatusOr<std::string> HashSegment(int fd, uint64_t size, const ::zerocopy::v1::Manifest& manifest,
                                                 unsigned threads, std::vector<Hash128>* leaves = nullptr);

 private:
  SegmentStore(std::string dir, UniqueFd dir_fd, UniqueFd lock_fd, bool huge_pages)
      : dir_(std::move(dir)), dir_fd_(std::move(dir_fd)), lock_fd_(std::move(lock_fd)), huge_pages_(huge_pages) {}
  bool dir_gid_differs() const { return gid_ != static_cast<gid_t>(-1) && gid_ != ::getegid(); }
  gid_t gid_ = static_cast<gid_t>(-1);  // the directory's group: every segment file gets it
  void Quarantine(const std::string& name, const std::string& why, RecoveryReport* report);

  std::string dir_;
  UniqueFd dir_fd_;
  UniqueFd lock_fd_;
  bool huge_pages_;
};

}  // namespace zerocopy::daemon
