// SegmentStore on a real directory: the files of a model's life, the
// directory lock, and recovery sorting what it finds at start.
#include "segment_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <catch2/catch.hpp>

#include "support.h"
#include "zerocopy/digest.h"
#include "zerocopy/manifest.h"

namespace zerocopy::daemon {
namespace {

struct Committed {
  std::string digest;
  std::string path;
};

// A model of one U8 tensor holding `bytes`, as a staging file, sealed,
// hashed and committed.
Committed Commit(SegmentStore& store, const std::string& id, std::string bytes) {
  v1::Manifest manifest;
  manifest.add_storages()->set_size(bytes.size());
  v1::Tensor* t = manifest.add_tensors();
  t->set_name("t");
  t->set_dtype(v1::U8);
  t->add_shape(static_cast<int64_t>(bytes.size()));
  REQUIRE(AssignOffsets(&manifest).ok());
  bytes.resize(manifest.total_size());
  REQUIRE(store.CreateStaging(id, bytes.size()).ok());
  int fd = ::open(store.StagingPath(id).c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
  auto sealed = store.SealStaging(id, bytes.size());
  REQUIRE(sealed.ok());
  auto digest = SegmentStore::HashSegment(sealed->get(), bytes.size(), manifest, 1);
  REQUIRE(digest.ok());
  CHECK(*digest == ComputeDigest(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), manifest, 1));
  v1::ModelRecord record;
  *record.mutable_manifest() = manifest;
  record.set_digest(*digest);
  REQUIRE(store.CommitStaging(id, record).ok());
  return {*digest, store.SegmentPath(*digest)};
}

TEST_CASE("a committed segment is sealed read-only and survives a restart", "[segment_store]") {
  testing::TempDir dir("/dev/shm");
  const std::string path = dir.path() + "/segments";
  Committed c;
  {
    auto store = SegmentStore::Open(path, static_cast<gid_t>(-1));
    REQUIRE(store.ok());
    c = Commit(**store, std::string(32, '1'), std::string(10000, 'x'));
    struct stat st;
    REQUIRE(::stat(c.path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0440);
    CHECK(::access((*store)->StagingPath(std::string(32, '1')).c_str(), F_OK) != 0);  // renamed away
    // A second daemon on the same directory is refused while this one holds it.
    auto second = SegmentStore::Open(path, static_cast<gid_t>(-1));
    REQUIRE_FALSE(second.ok());
    CHECK(second.status().code() == absl::StatusCode::kFailedPrecondition);
    // Left behind by a publisher when the daemon died:
    REQUIRE((*store)->CreateStaging(std::string(32, '2'), 100).ok());
  }
  auto store = SegmentStore::Open(path, static_cast<gid_t>(-1));
  REQUIRE(store.ok());
  auto report = (*store)->Recover(/*verify=*/true, 1);
  CAPTURE(report.quarantined);
  REQUIRE(report.models.size() == 1);
  CHECK(report.models[0].record.digest() == c.digest);
  CHECK(report.staging_removed == 1);
  CHECK(report.quarantined.empty());
}

TEST_CASE("recovery quarantines a segment whose bytes changed", "[segment_store]") {
  testing::TempDir dir("/dev/shm");
  const std::string path = dir.path() + "/segments";
  Committed c;
  {
    auto store = SegmentStore::Open(path, static_cast<gid_t>(-1));
    REQUIRE(store.ok());
    c = Commit(**store, std::string(32, '3'), std::string(5000, 'y'));
  }
  ::chmod(c.path.c_str(), 0640);
  {
    std::fstream f(c.path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('z');
  }
  auto store = SegmentStore::Open(path, static_cast<gid_t>(-1));
  REQUIRE(store.ok());
  auto report = (*store)->Recover(/*verify=*/true, 1);
  CHECK(report.models.empty());
  REQUIRE(report.quarantined.size() >= 1);
  CHECK(::access(c.path.c_str(), F_OK) != 0);
}

TEST_CASE("a staging file changed in size is not sealed", "[segment_store]") {
  testing::TempDir dir("/dev/shm");
  auto store = SegmentStore::Open(dir.path() + "/segments", static_cast<gid_t>(-1));
  REQUIRE(store.ok());
  const std::string id(32, '4');
  REQUIRE((*store)->CreateStaging(id, 4096).ok());
  REQUIRE(::truncate((*store)->StagingPath(id).c_str(), 100) == 0);
  auto sealed = (*store)->SealStaging(id, 4096);
  REQUIRE_FALSE(sealed.ok());
  CHECK(sealed.status().code() == absl::StatusCode::kFailedPrecondition);
  (*store)->RemoveStaging(id);
  CHECK((*store)->SealStaging(id, 4096).status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace zerocopy::daemon
