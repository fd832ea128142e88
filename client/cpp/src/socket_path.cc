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
  // it; also for a user its directory refuses (EACCES), so that their error
  // says they are not in its group rather than that no daemon runs.
  static constexpr char kSystemSocket[] = "/run/zerocopy/zerocopyd.sock";
  if (::geteuid() == 0 || ::access(kSystemSocket, F_OK) == 0 || errno == EACCES) return kSystemSocket;
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg && *xdg) return absl::StrCat(xdg, "/zerocopy/zerocopyd.sock");
  return absl::StrCat("/tmp/zerocopy-", ::geteuid(), "/zerocopyd.sock");
}

}  // namespace zerocopy
