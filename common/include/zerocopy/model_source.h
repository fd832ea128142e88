// ModelSource: what a publisher hands to Client::Publish. The manifest
// describes storages (sizes) and tensors; storage_data[i] points at the
// manifest.storages(i).size() bytes of storage i, which must stay valid and
// unchanged until Publish returns.
#pragma once

#include <vector>

#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

struct ModelSource {
  ::zerocopy::v1::Manifest manifest;
  std::vector<const void*> storage_data;
};

}  // namespace zerocopy
