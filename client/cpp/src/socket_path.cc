#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "zerocopy/client.h"

namespace zerocopy {

std::string DefaultSocketPath() {
  const char* env = std::getenv("ZEROCOPY_SOCKET");
  if (env && *env) return env;
  // The system service's socket, for root and for every user who can see
  // it; then this user's own daemon's; then, for a user the system socket's
  // directory refuses (EACCES), the system socket anyway, so that their
  // error says they are not in its group rather than that no daemon runs.
  static constexpr char kSystemSocket[] = "/run/zerocopy/zerocopyd.sock";
  if (::geteuid() == 0 || ::access(kSystemSocket, F_OK) == 0) return kSystemSocket;
  const bool refused = errno == EACCES;
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string own = xdg && *xdg ? absl::StrCat(xdg, "/zerocopy/zerocopyd.sock")
                                : absl::StrCat("/tmp/zerocopy-", ::geteuid(), "/zerocopyd.sock");
  if (refused && ::access(own.c_str(), F_OK) != 0) return kSystemSocket;
  return own;
}

}  // namespace zerocopy
