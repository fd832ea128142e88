#include "zerocopy/byte_size.h"

#include <unistd.h>

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace zerocopy {

uint64_t PhysicalMemory() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  std::string s(absl::StripAsciiWhitespace(text));
  if (s.empty()) return absl::InvalidArgumentError("empty size");
  if (s.back() == '%') {
    double pct;
    if (!absl::SimpleAtod(s.substr(0, s.size() - 1), &pct) || pct <= 0 || pct > 100) {
      return absl::InvalidArgumentError(absl::StrCat("size '", s, "': a percentage must be in (0, 100]"));
    }
    return static_cast<uint64_t>(PhysicalMemory() * (pct / 100.0));
  }
  size_t i = 0;
  while (i < s.size() && (absl::ascii_isdigit(s[i]) || s[i] == '.')) ++i;
  std::string number = s.substr(0, i);
  std::string unit = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(s.substr(i)));
  if (unit.size() > 1 && unit.back() == 'B') unit.pop_back();
  if (unit.size() > 1 && unit.back() == 'I') unit.pop_back();
  int shift;
  if (unit.empty())
    shift = 0;
  else if (unit == "K")
    shift = 10;
  else if (unit == "M")
    shift = 20;
  else if (unit == "G")
    shift = 30;
  else if (unit == "T")
    shift = 40;
  else
    return absl::InvalidArgumentError(absl::StrCat("size '", s, "': unknown unit (use K, M, G, T or %)"));
  double value;
  if (number.empty() || !absl::SimpleAtod(number, &value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("size '", s, "' is not a number with an optional unit"));
  }
  double bytes = value * std::ldexp(1.0, shift);
  if (bytes >= 1.8e19) return absl::InvalidArgumentError(absl::StrCat("size '", s, "' is too large"));
  return static_cast<uint64_t>(bytes);
}

std::string FormatBytes(uint64_t bytes, int decimals) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.*f %s", decimals, v, kUnits[u]);
}

}  // namespace zerocopy
