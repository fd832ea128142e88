// Internal: nlohmann's parser recurses, so every untrusted JSON text is
// checked for nesting depth before it is parsed.
#pragma once

#include "absl/strings/string_view.h"

namespace zerocopy::internal {

inline bool JsonNestingWithin(absl::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

}  // namespace zerocopy::internal
