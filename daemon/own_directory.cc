#include "own_directory.h"

#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "zerocopy/status.h"

namespace zerocopy::daemon {

absl::Status CheckOwnDirectory(int dir_fd, absl::string_view what, const std::string& path) {
  struct stat st;
  if (::fstat(dir_fd, &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", what, " ", path));
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " ", path, " belongs to uid ", st.st_uid, ", not to this daemon's uid ", ::geteuid(),
        ": whoever owns it could change what it holds; remove it and restart (the daemon creates it), or use a "
        "directory of its own"));
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " ", path, " is writable by ", (st.st_mode & S_IWOTH) ? "everyone" : "its group", " (mode ",
        absl::StrFormat("%04o", st.st_mode & 07777), "): others could replace what it holds; chmod go-w it"));
  }
  return absl::OkStatus();
}

}  // namespace zerocopy::daemon
