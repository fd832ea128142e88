#include "zerocopy/fake_gpu.h"

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace zerocopy::fake_gpu {

namespace {
constexpr absl::string_view kPrefix = "fake:";
}  // namespace

std::string Handle(absl::string_view path) { return absl::StrCat(kPrefix, path); }

std::optional<std::string> PathOf(absl::string_view handle) {
  if (!absl::StartsWith(handle, kPrefix) || handle.size() == kPrefix.size()) return std::nullopt;
  return std::string(handle.substr(kPrefix.size()));
}

std::vector<std::string> FromEnvironment() {
  const char* env = std::getenv(kEnv);
  if (env == nullptr || *env == '\0') return {};
  return absl::StrSplit(env, ',', absl::SkipEmpty());
}

}  // namespace zerocopy::fake_gpu
