// Parsing a file in place: the readers keep the file's mapping alive in
// what they return, so that the storages point into it with no copy.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "zerocopy/mapped_region.h"
#include "zerocopy/status.h"

namespace zerocopy {

// Maps `path` and runs `parse(data, size)` over it; its errors name the
// path. `*region` receives the mapping, for the result to hold.
template <typename Parse>
auto ParseMappedFile(const std::string& path, Parse parse, std::shared_ptr<MappedRegion>* region)
    -> decltype(parse(static_cast<const uint8_t*>(nullptr), size_t{0})) {
  ZC_ASSIGN_OR_RETURN(MappedRegion mapped, MappedRegion::MapFile(path));
  *region = std::make_shared<MappedRegion>(std::move(mapped));
  auto parsed = parse((*region)->data(), (*region)->size());
  if (!parsed.ok()) return Annotate(parsed.status(), path);
  return parsed;
}

}  // namespace zerocopy
