#include "zerocopy/segment_layout.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace zerocopy {

std::string SegmentFileName(absl::string_view digest) { return absl::StrCat(digest, kSegmentSuffix); }

std::string RecordFileName(absl::string_view digest) { return absl::StrCat(digest, kRecordSuffix); }

std::string ServingLine(pid_t pid, uint64_t socket_inode) { return absl::StrCat(pid, " ", socket_inode, "\n"); }

std::optional<uint64_t> ServingSocketInode(absl::string_view content) {
  const size_t space = content.find(' ');
  if (space == absl::string_view::npos) return std::nullopt;
  absl::string_view inode = absl::StripTrailingAsciiWhitespace(content.substr(space + 1));
  uint64_t value;
  if (!absl::SimpleAtoi(inode, &value)) return std::nullopt;
  return value;
}

v1::ModelInfo InfoFromRecord(const v1::ModelRecord& record, const std::string& segment_path) {
  v1::ModelInfo info;
  const v1::Manifest& m = record.manifest();
  info.set_digest(record.digest());
  info.set_size(m.total_size());
  info.set_tensor_count(static_cast<uint32_t>(m.tensors_size()));
  info.set_storage_count(static_cast<uint32_t>(m.storages_size()));
  info.set_segment_path(segment_path);
  info.set_format(m.format());
  info.set_created_unix_ms(record.created_unix_ms());
  *info.mutable_origin() = record.origin();
  if (record.has_publisher_uid()) info.set_publisher_uid(record.publisher_uid());
  if (record.has_publisher_gid()) info.set_publisher_gid(record.publisher_gid());
  return info;
}

}  // namespace zerocopy
