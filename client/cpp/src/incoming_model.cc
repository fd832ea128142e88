#include "zerocopy/incoming_model.h"

#include "absl/strings/str_cat.h"
#include "zerocopy/client.h"

namespace zerocopy {

IncomingModel::~IncomingModel() { Abort(); }

absl::Status IncomingModel::Write(uint64_t offset, const void* data, uint64_t n) {
  if (done_) return absl::FailedPreconditionError("the incoming model was already committed or aborted");
  if (offset > size() || n > size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat("write of ", n, " bytes at offset ", offset,
                                                   " is past the end of a ", size(), "-byte model"));
  }
  if (n == 0) return absl::OkStatus();
  // A file system that filled up is the write's error (ENOSPC), never a SIGBUS.
  return WriteAllAt(file_.get(), data, n, offset, path_);
}

absl::StatusOr<v1::ModelInfo> IncomingModel::Commit(const v1::Origin& origin) {
  if (done_) return absl::FailedPreconditionError("the incoming model was already committed or aborted");
  done_ = true;
  file_.reset();  // the daemon seals the file: it must find no writer left (its lease check)
  auto committed = client_->CommitStaging(staging_id_, digest_, size(), origin);
  // A refused commit already dropped the staging file; the abort is
  // harmless then and covers a commit that never reached the daemon.
  if (!committed.ok()) client_->AbortStaging(staging_id_);
  return committed;
}

void IncomingModel::Abort() {
  if (done_) return;
  done_ = true;
  file_.reset();
  client_->AbortStaging(staging_id_);
}

}  // namespace zerocopy
