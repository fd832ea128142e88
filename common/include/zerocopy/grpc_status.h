// The one place that converts between absl::Status and grpc::Status. Codes
// map one to one (they are the same numbering); messages are kept.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace zerocopy {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace zerocopy
