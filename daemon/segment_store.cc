#include "segment_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstring>
#include <set>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/string_view.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "log.h"
#include "own_directory.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/parallel_for.h"
#include "zerocopy/segment_layout.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy::daemon {

namespace v1 = ::zerocopy::v1;

namespace {

constexpr char kCatalogName[] = "catalog.pb";

// The mount options of the file system holding `dir`: huge pages are on
// when a tmpfs is mounted with huge=always|within_size. Not huge=advise:
// there a page is huge only where a mapping asked for it (MADV_HUGEPAGE),
// and writers fill staging files with pwrite, through no mapping.
bool MountHasHugePages(const std::string& dir) {
  std::ifstream mounts("/proc/self/mounts");
  std::string line, best_opts;
  size_t best_len = 0;
  while (std::getline(mounts, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() < 4) continue;
    const std::string& mnt = f[1];
    bool prefix = dir == mnt || (absl::StartsWith(dir, mnt) && (mnt == "/" || dir[mnt.size()] == '/'));
    if (prefix && mnt.size() >= best_len) {
      best_len = mnt.size();
      best_opts = f[2] == "tmpfs" ? f[3] : "";
    }
  }
  for (absl::string_view opt : absl::StrSplit(best_opts, ',')) {
    if (opt == "huge=always" || opt == "huge=within_size") return true;
  }
  return false;
}

absl::Status WriteFileAtomically(int dir_fd, const std::string& name, const std::string& bytes, mode_t mode) {
  std::string tmp = absl::StrCat(name, ".tmp");
  UniqueFd fd(::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("create ", tmp));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::unlinkat(dir_fd, tmp.c_str(), 0);
      return ErrnoStatus(err, absl::StrCat("write ", tmp));
    }
    done += static_cast<size_t>(n);
  }
  ::fchmod(fd.get(), mode);
  if (::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    int err = errno;
    ::unlinkat(dir_fd, tmp.c_str(), 0);
    return ErrnoStatus(err, absl::StrCat("rename ", tmp));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFileAt(int dir_fd, const std::string& name) {
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", name));
  return ReadAll(fd.get(), name);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SegmentStore>> SegmentStore::Open(const std::string& dir, gid_t gid) {
  if (::mkdir(dir.c_str(), 0710) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("create segment directory ", dir));
  }
  // Never through a symlink: its target would be re-moded and filled.
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir_fd) {
    if (errno == ELOOP || errno == ENOTDIR) {
      return absl::FailedPreconditionError(
          absl::StrCat("segment directory ", dir,
                       " is a symlink or not a directory; refusing to use it (remove it, or point "
                       "segment_dir at a directory of this daemon's own)"));
    }
    return ErrnoStatus(errno, absl::StrCat("open segment directory ", dir));
  }
  ZC_RETURN_IF_ERROR(CheckOwnDirectory(dir_fd.get(), "segment directory", dir));
  if (gid != static_cast<gid_t>(-1) && ::fchown(dir_fd.get(), static_cast<uid_t>(-1), gid) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chown segment directory ", dir, " to gid ", gid));
  }
  if (::fchmod(dir_fd.get(), 0710) != 0) return ErrnoStatus(errno, absl::StrCat("chmod 0710 ", dir));

  UniqueFd lock_fd(::openat(dir_fd.get(), kLockFileName, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock_fd) return ErrnoStatus(errno, absl::StrCat("open ", dir, "/", kLockFileName));
  if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return ErrnoStatus(errno, absl::StrCat("lock ", dir));
    char buf[32] = {};
    ssize_t n = ::pread(lock_fd.get(), buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "unknown";
    holder = holder.substr(0, holder.find_first_of(" \n"));  // "<pid> <socket inode>"
    return absl::FailedPreconditionError(
        absl::StrCat("segment directory ", dir, " is in use by another zerocopyd (pid ", holder, ")"));
  }
  std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(lock_fd.get(), 0) != 0 || ::pwrite(lock_fd.get(), pid.data(), pid.size(), 0) < 0) {
    return ErrnoStatus(errno, absl::StrCat("write ", dir, "/", kLockFileName));
  }
  // Readable by the segment group: see RecordServing.
  if (gid != static_cast<gid_t>(-1) && ::fchown(lock_fd.get(), static_cast<uid_t>(-1), gid) != 0) {
    return ErrnoStatus(errno, absl::StrCat("chown ", dir, "/", kLockFileName));
  }
  if (::fchmod(lock_fd.get(), 0640) != 0) return ErrnoStatus(errno, absl::StrCat("chmod ", dir, "/", kLockFileName));
  char real[PATH_MAX];
  std::string resolved = ::realpath(dir.c_str(), real) ? std::string(real) : dir;
  struct stat dir_stat;
  if (::fstat(dir_fd.get(), &dir_stat) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", dir));
  std::unique_ptr<SegmentStore> store(
      new SegmentStore(resolved, std::move(dir_fd), std::move(lock_fd), MountHasHugePages(resolved)));
  store->gid_ = dir_stat.st_gid;
  return store;
}

absl::Status SegmentStore::RecordServing(ino_t socket_inode) {
  const std::string line = ServingLine(::getpid(), socket_inode);
  if (::ftruncate(lock_fd_.get(), 0) != 0 || ::pwrite(lock_fd_.get(), line.data(), line.size(), 0) < 0) {
    return ErrnoStatus(errno, absl::StrCat("write ", dir_, "/", kLockFileName));
  }
  return absl::OkStatus();
}

std::string SegmentStore::SegmentPath(const std::string& digest) const {
  return absl::StrCat(dir_, "/", SegmentFileName(digest));
}

std::string SegmentStore::StagingPath(const std::string& staging_id) const {
  return absl::StrCat(dir_, "/", kStagingPrefix, staging_id);
}

absl::StatusOr<uint64_t> SegmentStore::FreeBytes() const {
  struct statvfs st;
  if (::fstatvfs(dir_fd_.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("statvfs ", dir_));
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

absl::Status SegmentStore::CreateStaging(const std::string& staging_id, uint64_t size) {
  std::string name = absl::StrCat(kStagingPrefix, staging_id);
  UniqueFd fd(::openat(dir_fd_.get(), name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0660));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("create ", StagingPath(staging_id)));
  ::fchmod(fd.get(), 0660);  // the umask must not take the group's write bit
  // New files take the daemon's group, not the directory's: give them the
  // directory's (segment_group), whose members publish into and map them.
  if (dir_gid_differs()) {
    if (::fchown(fd.get(), static_cast<uid_t>(-1), gid_) != 0) {
      absl::Status s = ErrnoStatus(errno, absl::StrCat("chown ", StagingPath(staging_id), " to gid ", gid_,
                                                       " (the daemon must be a member of segment_group)"));
      ::unlinkat(dir_fd_.get(), name.c_str(), 0);
      return s;
    }
  }
  // Sized, not allocated: the writers (Client::Publish, IncomingModel)
  // write it with pwrite, so a full file system is their write's ENOSPC,
  // never a SIGBUS, and the allocation is spread over their copy threads
  // instead of taking one thread ~0.3 s a GiB here before any byte moves.
  if (size > 0 && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat("size ", StagingPath(staging_id), " to ", size, " bytes"));
    ::unlinkat(dir_fd_.get(), name.c_str(), 0);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> SegmentStore::SealStaging(const std::string& staging_id, uint64_t size) {
  std::string name = absl::StrCat(kStagingPrefix, staging_id);
  UniqueFd fd(::openat(dir_fd_.get(), name.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", StagingPath(staging_id)));
  // Read-only from now on for everyone but its owner (us) ...
  if (::fchmod(fd.get(), 0440) != 0) return ErrnoStatus(errno, absl::StrCat("chmod ", StagingPath(staging_id)));
  // ... and no writer left: a read lease is granted only while no process
  // has the file open for writing (a descriptor or a shared mapping), so a
  // publisher cannot change the bytes after we hash them.
  if (::fcntl(fd.get(), F_SETLEASE, F_RDLCK) != 0) {
    if (errno == EAGAIN || errno == EBUSY) {
      return absl::FailedPreconditionError(
          "the staging file is still open for writing: close every descriptor and mapping of it before CommitModel");
    }
    // Leases disabled (fs.leases-enable = 0): the mode change is all we have.
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      Log().warn("file leases unavailable ({}): cannot prove publishers closed their staging files",
                 std::strerror(errno));
    }
  } else {
    ::fcntl(fd.get(), F_SETLEASE, F_UNLCK);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", StagingPath(staging_id)));
  if (st.st_nlink != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("the staging file has ", st.st_nlink, " links: a model must have exactly one"));
  }
  if (static_cast<uint64_t>(st.st_size) != size) {
    return absl::FailedPreconditionError(absl::StrCat("staging file is ", st.st_size, " bytes; the model needs ", size,
                                                      " (the publisher changed its size)"));
  }
  return fd;
}

absl::StatusOr<std::string> SegmentStore::HashSegment(int fd, uint64_t size, const v1::Manifest& manifest,
                                                      unsigned threads, std::vector<Hash128>* leaves_out) {
  // Hashed where it lies, through a read-only mapping: no copy into a
  // buffer (a pread per chunk spent a fifth of a commit copying, and marked
  // every page accessed once more). A file shorter than `size` would fault
  // (SIGBUS) past its end, so its length is checked first; a sealed file
  // cannot shrink afterwards (0440, ours, no writer left).
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "stat segment");
  if (static_cast<uint64_t>(st.st_size) < size) {
    return absl::DataLossError(absl::StrCat("segment is shorter than its ", size, " bytes (", st.st_size, ")"));
  }
  MappedRegion::Options options;
  options.access = MappedRegion::Access::kReadOnly;
  ZC_ASSIGN_OR_RETURN(MappedRegion region, MappedRegion::Map(fd, size, options));
  std::vector<Hash128> leaves(DigestLeafCount(size));
  absl::Mutex failed_mu;
  absl::Status failed;
  ParallelFor(leaves.size(), threads, [&](size_t i) {
    // Each chunk's pages mapped in one call (on the hashing threads, not a
    // fault per 64 KiB); a kernel without it faults them as it reads. A
    // page its writer never wrote is a hole, which reading allocates: on a
    // full file system that fails here, where the read would be a SIGBUS
    // of the daemon (a publisher that wrote nothing and filled the tmpfs).
    const uint64_t begin = static_cast<uint64_t>(i) * kDigestChunk;
    if (absl::Status populated = region.PopulateForRead(begin, std::min<uint64_t>(kDigestChunk, size - begin));
        !populated.ok() && !absl::IsUnimplemented(populated)) {
      absl::MutexLock lock(&failed_mu);
      failed.Update(Annotate(
          populated,
          "reading the segment for its digest check (pages its publisher never wrote, on a full file system?)"));
      return;
    }
    leaves[i] = HashLeaf(region.data(), size, i);
  });
  if (!failed.ok()) return failed;
  // Tearing down the page tables of a large mapping takes ~70 ms a GiB:
  // off the commit's path, on a thread of its own.
  if (size >= (64u << 20)) std::thread([r = std::move(region)]() mutable { r.Reset(); }).detach();
  std::string digest = CombineDigest(leaves, manifest);
  if (leaves_out != nullptr) *leaves_out = std::move(leaves);
  return digest;
}

absl::Status SegmentStore::CommitStaging(const std::string& staging_id, const v1::ModelRecord& record) {
  const std::string& digest = record.digest();
  ZC_RETURN_IF_ERROR(WriteFileAtomically(dir_fd_.get(), RecordFileName(digest), record.SerializeAsString(), 0440));
  std::string from = absl::StrCat(kStagingPrefix, staging_id);
  std::string to = SegmentFileName(digest);
  if (::renameat(dir_fd_.get(), from.c_str(), dir_fd_.get(), to.c_str()) != 0) {
    int err = errno;
    ::unlinkat(dir_fd_.get(), RecordFileName(digest).c_str(), 0);
    return ErrnoStatus(err, absl::StrCat("rename ", from, " to ", to));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SegmentStore::StagingWrittenMs(const std::string& staging_id) const {
  struct stat st;
  if (::fstatat(dir_fd_.get(), absl::StrCat(kStagingPrefix, staging_id).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoStatus(errno, absl::StrCat("stat ", StagingPath(staging_id)));
  }
  return int64_t{st.st_mtim.tv_sec} * 1000 + st.st_mtim.tv_nsec / 1000000;
}

void SegmentStore::RemoveStaging(const std::string& staging_id) {
  const std::string name = absl::StrCat(kStagingPrefix, staging_id);
  // Emptied before it is unlinked: a hard link its publisher made elsewhere
  // would otherwise keep the bytes on the tmpfs, outside every budget. (A
  // sealed file, 0440, refused other links at sealing already.)
  struct stat st;
  if (::fstatat(dir_fd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) && st.st_nlink > 1) {
    UniqueFd fd(::openat(dir_fd_.get(), name.c_str(), O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (fd) ::ftruncate(fd.get(), 0);
  }
  ::unlinkat(dir_fd_.get(), name.c_str(), 0);
}

void SegmentStore::RemoveModel(const std::string& digest) {
  // The segment first: a crash in between leaves a manifest without a
  // segment, which recovery removes.
  ::unlinkat(dir_fd_.get(), SegmentFileName(digest).c_str(), 0);
  ::unlinkat(dir_fd_.get(), RecordFileName(digest).c_str(), 0);
}

absl::Status SegmentStore::WriteCatalog(const v1::CatalogFile& catalog) {
  std::string bytes;
  if (!catalog.SerializeToString(&bytes)) return absl::InternalError("serialize catalog");
  return WriteFileAtomically(dir_fd_.get(), kCatalogName, bytes, 0600);
}

absl::StatusOr<v1::CatalogFile> SegmentStore::ReadCatalog() const {
  auto bytes = ReadFileAt(dir_fd_.get(), kCatalogName);
  if (!bytes.ok()) return bytes.status();
  v1::CatalogFile catalog;
  if (!catalog.ParseFromString(*bytes)) {
    return absl::DataLossError(absl::StrCat(dir_, "/", kCatalogName, " does not parse"));
  }
  return catalog;
}

void SegmentStore::Quarantine(const std::string& name, const std::string& why, RecoveryReport* report) {
  ::mkdirat(dir_fd_.get(), "quarantine", 0700);
  std::string to = absl::StrCat("quarantine/", name);
  if (::renameat(dir_fd_.get(), name.c_str(), dir_fd_.get(), to.c_str()) != 0) {
    ::unlinkat(dir_fd_.get(), name.c_str(), 0);
  }
  report->quarantined.push_back(absl::StrCat(name, ": ", why));
}

SegmentStore::RecoveryReport SegmentStore::Recover(bool verify, unsigned hash_threads) {
  RecoveryReport report;
  std::vector<std::string> names;
  {
    UniqueFd fd(::openat(dir_fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    DIR* d = fd ? ::fdopendir(fd.release()) : nullptr;
    if (d == nullptr) return report;
    while (struct dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::set<std::string> segments, manifests;
  for (const auto& name : names) {
    if (absl::StartsWith(name, kStagingPrefix) || absl::EndsWith(name, ".tmp")) {
      ::unlinkat(dir_fd_.get(), name.c_str(), 0);
      ++report.staging_removed;
    } else if (absl::EndsWith(name, kSegmentSuffix)) {
      segments.insert(name.substr(0, name.size() - (sizeof kSegmentSuffix - 1)));
    } else if (absl::EndsWith(name, kRecordSuffix)) {
      manifests.insert(name.substr(0, name.size() - (sizeof kRecordSuffix - 1)));
    }
  }
  for (const auto& digest : manifests) {
    if (!segments.count(digest)) {
      ::unlinkat(dir_fd_.get(), RecordFileName(digest).c_str(), 0);
      ++report.orphans_removed;
    }
  }
  for (const auto& digest : segments) {
    std::string seg = SegmentFileName(digest);
    std::string man = RecordFileName(digest);
    if (!manifests.count(digest)) {
      Quarantine(seg, "no manifest", &report);
      continue;
    }
    v1::ModelRecord record;
    auto bytes = ReadFileAt(dir_fd_.get(), man);
    if (!bytes.ok() || !record.ParseFromString(*bytes) || record.digest() != digest || !IsDigest(digest) ||
        !ValidateManifest(record.manifest()).ok() || !CheckLayout(record.manifest()).ok()) {
      Quarantine(seg, "manifest unreadable or invalid", &report);
      Quarantine(man, "manifest unreadable or invalid", &report);
      continue;
    }
    UniqueFd fd(::openat(dir_fd_.get(), seg.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st;
    if (!fd || ::fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) != record.manifest().total_size()) {
      Quarantine(seg, "size does not match its manifest", &report);
      Quarantine(man, "size does not match its manifest", &report);
      continue;
    }
    if (verify) {
      std::vector<Hash128> leaves;
      auto hashed = HashSegment(fd.get(), record.manifest().total_size(), record.manifest(), hash_threads, &leaves);
      if (!hashed.ok() || *hashed != digest) {
        Quarantine(seg, "bytes do not match the digest", &report);
        Quarantine(man, "bytes do not match the digest", &report);
        continue;
      }
      record.set_leaves(EncodeLeaves(leaves));  // a record of an older daemon has none
    }
    ::fchmod(fd.get(), 0440);
    report.models.push_back(Adopted{std::move(record), SegmentPath(digest)});
  }
  return report;
}

}  // namespace zerocopy::daemon
