// zerocopy::Client: talks to the node's zerocopyd over its unix socket.
//
// Thread safety: all methods may be called concurrently.
// Deadlines: every call has one (ClientOptions::timeout; Publish's copy is
// not a call and has none).
// Fork safety: a Client belongs to the process that created it. In a forked
// child every method returns FAILED_PRECONDITION instead of touching the
// parent's gRPC channel; use Client::ForThisProcess(), which connects
// afresh in each process. Mappings inherited from the parent stay valid.
// Errors: the daemon's codes (docs/status-codes.md); UNAVAILABLE when
// the daemon cannot be reached (the message names the socket).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "zerocopy/device_model.h"
#include "zerocopy/incoming_model.h"
#include "zerocopy/mapped_model.h"
#include "zerocopy/model_source.h"
#include "zerocopy/v1/model_store.pb.h"

namespace zerocopy {

struct ClientOptions {
  std::string socket;  // "" resolves with DefaultSocketPath()
  std::chrono::milliseconds timeout{30000};
  unsigned copy_threads = 0;  // publish: 0 = one per core
};

struct PublishOptions {
  std::string name;  // tag to point at the model
  bool pin = false;
  // How the model came here (zerocopy ls shows it); kind "published" if
  // unset. Checked before any byte moves (INVALID_ARGUMENT).
  v1::Origin origin;
  // Called from the copying threads with (bytes done, bytes total).
  std::function<void(uint64_t, uint64_t)> progress;
};

// $ZEROCOPY_SOCKET, else /run/zerocopy/zerocopyd.sock as root or when it
// exists (the system service), else $XDG_RUNTIME_DIR/zerocopy/zerocopyd.sock,
// else /tmp/zerocopy-$UID/zerocopyd.sock (a daemon run by this user).
std::string DefaultSocketPath();

// A model as GetModel answers it. The manifest is shared and never
// changes: a client parses each model's manifest once and hands the same
// one out again for as long as the daemon sends the same bytes for it.
class ModelAnswer {
 public:
  ModelAnswer(v1::ModelInfo model, std::shared_ptr<const v1::Manifest> manifest, v1::DeviceCopy device)
      : model_(std::move(model)), manifest_(std::move(manifest)), device_(std::move(device)) {}

  const v1::ModelInfo& model() const { return model_; }
  const v1::Manifest& manifest() const { return *manifest_; }
  const std::shared_ptr<const v1::Manifest>& shared_manifest() const { return manifest_; }
  const v1::DeviceCopy& device() const { return device_; }
  // The model's leaf digests (EncodeLeaves bytes), when Get asked for them.
  const std::string& leaves() const { return leaves_; }
  // As the proto message (a copy: `zerocopy inspect --json`).
  v1::GetModelResponse ToProto() const {
    v1::GetModelResponse response;
    *response.mutable_model() = model_;
    *response.mutable_manifest() = *manifest_;
    if (device_.ByteSizeLong() != 0) *response.mutable_device() = device_;
    return response;
  }

 private:
  friend class Client;
  v1::ModelInfo model_;
  std::shared_ptr<const v1::Manifest> manifest_;
  v1::DeviceCopy device_;
  std::string leaves_;
};

class Client : public std::enable_shared_from_this<Client> {
 public:
  // Connects (lazily: the first call opens the channel). Never fails for
  // a missing daemon; calls then return UNAVAILABLE.
  static std::shared_ptr<Client> Create(ClientOptions options = {});
  // One client per process for the default options (or per socket, with
  // `socket`; "" is the default); a forked child gets its own.
  static std::shared_ptr<Client> ForThisProcess();
  static std::shared_ptr<Client> ForThisProcess(const std::string& socket);
  ~Client();

  const std::string& socket() const;

  // Copies the storages into a new segment (parallel, hashing as it
  // goes), commits, returns the model. Equal bytes give the same digest and
  // no second copy. On failure the staging segment is aborted.
  absl::StatusOr<v1::ModelInfo> Publish(const ModelSource& source, const PublishOptions& options = {});

  // Reserves a staging segment for model `digest` laid out as `manifest`
  // (a manifest as GetModel returns it on another node), to be written and
  // committed through the IncomingModel. Errors: ALREADY_EXISTS (the model
  // is here, or another live process of this node is transferring it: wait
  // for it), INVALID_ARGUMENT (digest, manifest, a layout that differs from
  // the manifest's), RESOURCE_EXHAUSTED, UNAVAILABLE, and INTERNAL (the
  // staging file could not be opened or mapped).
  absl::StatusOr<std::unique_ptr<IncomingModel>> Receive(const v1::Manifest& manifest, const std::string& digest);

  // The model's info and manifest, without mapping it; with_leaves: and its
  // leaf digests (ModelAnswer::leaves), what a node that pulls it checks
  // each chunk against.
  absl::StatusOr<ModelAnswer> Get(const std::string& ref, bool with_leaves = false);

  // Maps a model by name or digest, holding a lease on it (against
  // eviction) for as long as the MappedModel lives.
  absl::StatusOr<std::shared_ptr<MappedModel>> Map(const std::string& ref, const MapOptions& options = {});

  // Maps model `digest` straight from its segment file `segment_path` (the
  // path GetModel gave for it, e.g. when it was published) without waiting
  // for the daemon: the file and its manifest file are read directly once
  // they prove to be the daemon's (owned by the owner of the daemon's
  // socket, in a directory of that owner, writable by nobody else, the
  // manifest's digest the one asked for), and the lease is taken in the
  // background. Until the daemon grants it (one round trip later) an
  // eviction may remove the file: the mapping stays valid, its memory
  // counted outside the host budget until it is unmapped (SECURITY.md).
  // Falls back to Map(digest) whenever the file is not there or not
  // provably the daemon's. The mapping's info() holds what the files say
  // (no names, no lease count). Errors: those of Map (from the fallback);
  // FAILED_PRECONDITION in a forked child.
  absl::StatusOr<std::shared_ptr<MappedModel>> MapSegment(const std::string& digest, const std::string& segment_path,
                                                          const MapOptions& options = {});

  // Opens the model's shared device copy on GPU `gpu_uuid` (the daemon
  // makes it on first use), leased for as long as the DeviceModel and its
  // tensors live. See device_model.h. Errors: as Map, plus UNIMPLEMENTED
  // (GPU sharing off in the daemon, or this build lacks CUDA),
  // FAILED_PRECONDITION (the daemon sees no such GPU), RESOURCE_EXHAUSTED
  // (the GPU's budget), NOT_FOUND (this process does not see the GPU).
  absl::StatusOr<std::shared_ptr<DeviceModel>> MapDevice(const std::string& ref, const std::string& gpu_uuid);
  // The same on this process's GPU `ordinal` (cuda:N, or the N-th of
  // $ZEROCOPY_FAKE_GPUS). FAILED_PRECONDITION, naming it, for an ordinal
  // this process does not see.
  absl::StatusOr<std::shared_ptr<DeviceModel>> MapDevice(const std::string& ref, int ordinal);

  absl::StatusOr<v1::ListModelsResponse> List();
  absl::StatusOr<std::string> Delete(const std::string& ref, bool force = false);
  absl::StatusOr<v1::ModelInfo> Tag(const std::string& name, const std::string& ref);
  absl::StatusOr<v1::ModelInfo> Pin(const std::string& ref, bool pinned = true);
  absl::StatusOr<v1::GetStatsResponse> Stats();
  // The daemon's Prometheus metrics in the text exposition format: what
  // its metrics endpoint serves, asked over the socket (works with the
  // endpoint off too).
  absl::StatusOr<std::string> PrometheusText();
  // grpc.health.v1.Health/Check, the standard probe (Kubernetes readiness,
  // load balancers): OK when the daemon answers SERVING; UNAVAILABLE when
  // it does not answer, or answers anything else (named).
  absl::Status Health();
  // The session id of this process (opening the Session stream if needed).
  absl::StatusOr<uint64_t> SessionId();
  // Waits until every lease MapSegment asked for in the background has been
  // granted or refused (tests, and callers about to rely on it).
  void WaitForLeases();

 private:
  struct Impl;
  explicit Client(ClientOptions options);
  // GetModel with `request` on this process's session (its id goes into
  // the request and `*session_id`). When the daemon no longer knows the
  // session (it restarted), the stale one is closed so that a retry opens
  // a new one, and that FAILED_PRECONDITION is returned.
  absl::StatusOr<ModelAnswer> GetOnSession(v1::GetModelRequest request, std::chrono::milliseconds timeout,
                                           uint64_t* session_id);
  // GetModel with its manifest: the one this client holds (the daemon left
  // it out), the bytes the daemon sent (parsed once per model,
  // ManifestCache), or a message from a daemon that predates
  // manifest_as_bytes.
  absl::StatusOr<ModelAnswer> Fetch(v1::GetModelRequest request, std::chrono::milliseconds timeout);
  // Releases the session's lease on `digest` (its device copy on
  // `gpu_uuid`, if given), best effort: the session's end releases it anyway.
  std::function<void()> Releaser(uint64_t session_id, std::string digest, std::string gpu_uuid);
  // The thread that asks for MapSegment's leases, one after another.
  void LeaseLoop();
  // CommitModel of a staging segment of `size` bytes (the deadline allows
  // for the daemon's rehash), and AbortModel (best effort).
  absl::StatusOr<v1::ModelInfo> CommitStaging(const std::string& staging_id, const std::string& digest, uint64_t size,
                                              const v1::Origin& origin);
  void AbortStaging(const std::string& staging_id);
  friend class IncomingModel;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zerocopy
