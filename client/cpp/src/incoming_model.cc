#include "zerocopy/incoming_model.h"

#include "absl/strings/str_cat.h"
#include "zerocopy/client.h"
#include "zerocopy/status.h"

namespace zerocopy {

IncomingModel::~IncomingModel() { Abort(); }

absl::Status IncomingModel::SetLeaves(std::string_view leaves) {
  ZC_ASSIGN_OR_RETURN(std::vector<Hash128> decoded, DecodeLeaves(leaves, size()));
  if (CombineDigest(decoded, layout_) != digest_) {
    return absl::DataLossError(absl::StrCat("the leaf digests given for model ", digest_,
                                            " are not its own (they and its manifest make another digest)"));
  }
  absl::WriterMutexLock lock(&mu_);
  if (done_) return absl::FailedPreconditionError("the incoming model was already committed or aborted");
  leaves_ = std::move(decoded);
  return absl::OkStatus();
}

absl::Status IncomingModel::Write(uint64_t offset, const void* data, uint64_t n) {
  absl::ReaderMutexLock lock(&mu_);
  if (done_) return absl::FailedPreconditionError("the incoming model was already committed or aborted");
  if (offset > size() || n > size() - offset) {
    return absl::InvalidArgumentError(
        absl::StrCat("write of ", n, " bytes at offset ", offset, " is past the end of a ", size(), "-byte model"));
  }
  if (n == 0) return absl::OkStatus();
  if (!leaves_.empty()) ZC_RETURN_IF_ERROR(CheckLeaves(data, n, offset, size(), leaves_));
  // A file system that filled up is the write's error (ENOSPC), never a SIGBUS.
  return WriteAllAt(file_.get(), data, n, offset, path_);
}

absl::StatusOr<v1::ModelInfo> IncomingModel::Commit(const v1::Origin& origin) {
  absl::WriterMutexLock lock(&mu_);
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
  absl::WriterMutexLock lock(&mu_);
  if (done_) return;
  done_ = true;
  file_.reset();
  client_->AbortStaging(staging_id_);
}

}  // namespace zerocopy
