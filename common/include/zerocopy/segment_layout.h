// The segment directory's layout, in one place: what zerocopyd writes there
// (daemon/segment_store.cc) and what a client's fast path reads
// (Client::MapSegment maps a committed model straight from its files). When
// the two disagree the client quietly goes through the daemon instead, a
// slowdown no error shows: tests/cpp/client/client_test.cc checks the fast
// path is taken.
//
//   <dir>/.lock               flock'd by the serving daemon; its content is
//                             "<pid> <inode of the socket it serves>\n"
//   <dir>/<digest>.seg        a committed model's bytes (read-only)
//   <dir>/<digest>.manifest   its sealed record (zerocopy.v1.ModelRecord)
//   <dir>/staging-<id>        a model being written
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

inline constexpr char kLockFileName[] = ".lock";
inline constexpr char kStagingPrefix[] = "staging-";
inline constexpr char kSegmentSuffix[] = ".seg";
inline constexpr char kRecordSuffix[] = ".manifest";

// "<digest>.seg" and "<digest>.manifest".
std::string SegmentFileName(absl::string_view digest);
std::string RecordFileName(absl::string_view digest);

// The lock file's content while daemon `pid` serves the directory at the
// socket whose inode is `socket_inode`; and the inode such content names
// (nullopt when it names none: a daemon starting, or not ours).
std::string ServingLine(pid_t pid, uint64_t socket_inode);
std::optional<uint64_t> ServingSocketInode(absl::string_view content);

// What a sealed record says of its model, as GetModel's info (digest, size,
// counts, format, origin, publisher; not what only the registry knows:
// names, leases, pins, use).
::zerocopy::v1::ModelInfo InfoFromRecord(const ::zerocopy::v1::ModelRecord& record, const std::string& segment_path);

}  // namespace zerocopy
