// The directories the daemon trusts (its socket's, its segments') must be
// its own: owned by its uid and writable by nobody else. Otherwise another
// user could swap what they hold between two of the daemon's calls (a
// symlink where the socket was, a file of theirs renamed over a segment).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace zerocopy::daemon {

// Checks the open directory `dir_fd` (`what` and `path` name it in the
// error). Errors: FAILED_PRECONDITION saying who owns it or who may write
// it, and what to do; INTERNAL when fstat fails.
absl::Status CheckOwnDirectory(int dir_fd, absl::string_view what, const std::string& path);

}  // namespace zerocopy::daemon
