// The segment directory's layout (segment_layout.h): the names and the lock
// line the daemon writes are the ones a client reads back.
#include <catch2/catch.hpp>

#include "zerocopy/segment_layout.h"

namespace zerocopy {
namespace {

TEST_CASE("the lock line names the socket's inode, and only a complete line does", "[segment_layout]") {
  CHECK(ServingSocketInode(ServingLine(1234, 987654321)) == std::optional<uint64_t>(987654321));
  CHECK_FALSE(ServingSocketInode("1234\n").has_value());  // a daemon still starting: its pid alone
  CHECK_FALSE(ServingSocketInode("").has_value());
  CHECK_FALSE(ServingSocketInode("1234 x\n").has_value());
  CHECK_FALSE(ServingSocketInode("1234 -5\n").has_value());
}

TEST_CASE("file names and a record's info", "[segment_layout]") {
  const std::string digest(32, 'a');
  CHECK(SegmentFileName(digest) == digest + ".seg");
  CHECK(RecordFileName(digest) == digest + ".manifest");
  v1::ModelRecord record;
  record.set_digest(digest);
  record.mutable_manifest()->set_total_size(4096);
  record.mutable_manifest()->add_storages()->set_size(4000);
  record.mutable_manifest()->set_format("safetensors");
  record.set_created_unix_ms(17);
  record.mutable_origin()->set_kind("preloaded");
  record.set_publisher_uid(1000);
  auto info = InfoFromRecord(record, "/dev/shm/zerocopy/" + SegmentFileName(digest));
  CHECK(info.digest() == digest);
  CHECK(info.size() == 4096);
  CHECK(info.storage_count() == 1);
  CHECK(info.tensor_count() == 0);
  CHECK(info.format() == "safetensors");
  CHECK(info.created_unix_ms() == 17);
  CHECK(info.origin().kind() == "preloaded");
  CHECK(info.publisher_uid() == 1000);
  CHECK_FALSE(info.has_publisher_gid());
  CHECK(info.names_size() == 0);
}

}  // namespace
}  // namespace zerocopy
