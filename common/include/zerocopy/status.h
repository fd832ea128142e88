// Error handling helpers shared by the daemon, the client and the CLI.
//
// Everything returns absl::Status / absl::StatusOr; the codes are gRPC's
// (docs/status-codes.md says which situation gets which code).
#pragma once

#include <cerrno>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ZC_STATUS_CONCAT_INNER_(a, b) a##b
#define ZC_STATUS_CONCAT_(a, b) ZC_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` is not OK.
#define ZC_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status zc_status_ = (expr);      \
    if (!zc_status_.ok()) return zc_status_; \
  } while (0)

// `lhs` = value of the StatusOr `rexpr`, or return its error.
#define ZC_ASSIGN_OR_RETURN(lhs, rexpr) ZC_ASSIGN_OR_RETURN_IMPL_(ZC_STATUS_CONCAT_(zc_statusor_, __LINE__), lhs, rexpr)
#define ZC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                              \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

namespace zerocopy {

// A Status for a failed syscall: ENOSPC/ENOMEM/EDQUOT become
// RESOURCE_EXHAUSTED, ENOENT NOT_FOUND, EACCES/EPERM PERMISSION_DENIED,
// everything else INTERNAL. The message is "<what>: <strerror> (errno N)".
absl::Status ErrnoStatus(int err, absl::string_view what);

// Prefixes the message of a non-OK status with context, keeping its code.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace zerocopy
