#include "zerocopy/client.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/string_view.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "manifest_cache.h"
#include "zerocopy/digest.h"
#include "zerocopy/grpc_status.h"
#include "zerocopy/manifest.h"
#include "zerocopy/segment_layout.h"
#include "zerocopy/parallel_for.h"
#include "zerocopy/status.h"
#include "zerocopy/unique_fd.h"
#include "zerocopy/v1/model_store.grpc.pb.h"

namespace zerocopy {

namespace {

// The group that may use `socket`, when this process may not: the socket or
// a directory above it refuses us (EACCES). Empty otherwise.
std::string SocketGroupDenyingUs(const std::string& socket) {
  if (::access(socket.c_str(), R_OK | W_OK) == 0 || errno != EACCES) return "";
  // The innermost path (the socket, then its directories) we can stat.
  std::string path = socket;
  struct stat st;
  while (::stat(path.c_str(), &st) != 0) {
    const size_t slash = path.rfind('/');
    if (slash == std::string::npos || slash == 0) return "";
    path.resize(slash);
  }
  struct group gr;
  struct group* found = nullptr;
  char buf[4096];  // getgrgid_r: Convert runs on any thread
  if (::getgrgid_r(st.st_gid, &gr, buf, sizeof buf, &found) == 0 && found != nullptr) return found->gr_name;
  return std::to_string(st.st_gid);
}

}  // namespace

namespace {

constexpr int kMaxMessage = 512 << 20;  // a manifest of 100,000+ tensors fits
constexpr char kClientName[] = "libzerocopy/" ZEROCOPY_VERSION;
// How many of its manifests a client lists in a GetModel (the most
// recently used).
constexpr size_t kManifestsHeld = 8;

// How much of a storage Publish hashes, then writes, at a time: small
// enough that the write copies from cache what the hash has just read.
constexpr uint64_t kPublishSlice = 256u << 10;

// The staging file the daemon made for a publish or a pull, opened for
// writing once it is checked to be `size` bytes.
absl::StatusOr<UniqueFd> OpenStaging(const std::string& path, uint64_t size) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || static_cast<uint64_t>(st.st_size) != size) {
    return absl::InternalError(absl::StrCat(path, " is not ", size, " bytes"));
  }
  return fd;
}

// The daemon restarted and no longer knows our session.
bool IsUnknownSession(const absl::Status& status) {
  return absl::IsFailedPrecondition(status) && absl::StrContains(status.message(), "unknown session");
}

}  // namespace

// A lease MapSegment asked for in the background, and what became of it.
struct BackgroundLease {
  absl::Mutex mu;
  enum class Stage { kAsked, kHeld, kRefused } stage ABSL_GUARDED_BY(mu) = Stage::kAsked;
  uint64_t session_id ABSL_GUARDED_BY(mu) = 0;
  bool dropped ABSL_GUARDED_BY(mu) = false;  // the mapping went before the answer came
};

struct Client::Impl {
  ClientOptions options;
  pid_t pid = ::getpid();
  absl::Mutex mu;
  std::shared_ptr<grpc::Channel> channel ABSL_GUARDED_BY(mu);
  std::unique_ptr<v1::ModelStore::Stub> stub ABSL_GUARDED_BY(mu);
  // The Session stream: open for the life of this client.
  std::unique_ptr<grpc::ClientContext> session_ctx ABSL_GUARDED_BY(mu);
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> session ABSL_GUARDED_BY(mu);
  uint64_t session_id ABSL_GUARDED_BY(mu) = 0;
  ManifestCache manifests;

  // MapSegment's leases, asked for off the caller's path by one thread
  // (started on first use, joined by ~Client).
  absl::Mutex lease_mu;
  std::deque<std::pair<std::string, std::shared_ptr<BackgroundLease>>> pending ABSL_GUARDED_BY(lease_mu);
  int asking ABSL_GUARDED_BY(lease_mu) = 0;
  bool stopping ABSL_GUARDED_BY(lease_mu) = false;
  std::thread lease_thread;  // under lease_mu

  absl::Status CheckProcess() const {
    if (::getpid() != pid) {
      return absl::FailedPreconditionError(
          absl::StrCat("this zerocopy::Client was created in process ", pid, " and cannot be used after fork() in ",
                       ::getpid(), "; use zerocopy::Client::ForThisProcess() or create a new Client"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::ModelStore::Stub*> Stub() {
    ZC_RETURN_IF_ERROR(CheckProcess());
    absl::MutexLock lock(&mu);
    if (!stub) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(kMaxMessage);
      args.SetMaxSendMessageSize(kMaxMessage);
      // A unix socket: no proxies, no DNS.
      args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
      // Our own connection: gRPC would otherwise share one between clients
      // of the same socket, and a client made after a daemon restart would
      // inherit another's dead connection.
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      channel =
          grpc::CreateCustomChannel(absl::StrCat("unix:", options.socket), grpc::InsecureChannelCredentials(), args);
      stub = v1::ModelStore::NewStub(channel);
    }
    return stub.get();
  }

  void Prepare(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) const {
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  }
  void Prepare(grpc::ClientContext* ctx) const { Prepare(ctx, options.timeout); }

  absl::Status Convert(const grpc::Status& status, absl::string_view method) const {
    if (status.ok()) return absl::OkStatus();
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      if (std::string group = SocketGroupDenyingUs(options.socket); !group.empty()) {
        return absl::PermissionDeniedError(
            absl::StrCat("zerocopyd at ", options.socket, " is for the members of the group ", group,
                         " and this user is not one (permission denied): `usermod -aG ", group,
                         " USER`, then log in again (or start the command with `sg ", group, " -c ...`)"));
      }
      return absl::UnavailableError(absl::StrCat("zerocopyd is not reachable at ", options.socket, " (", method, ": ",
                                                 status.error_message(),
                                                 "); start it, or set ZEROCOPY_SOCKET to where it listens"));
    }
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::DeadlineExceededError(absl::StrCat(method, ": no answer from zerocopyd at ", options.socket,
                                                      " within ", options.timeout.count(), " ms"));
    }
    return FromGrpcStatus(status);
  }

  absl::StatusOr<uint64_t> OpenSession() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    session_ctx = std::make_unique<grpc::ClientContext>();
    // Wait for the daemon for at most the timeout, then the stream lives on.
    session_ctx->set_wait_for_ready(false);
    session = stub->Session(session_ctx.get());
    v1::SessionRequest hello;
    hello.mutable_hello()->set_pid(::getpid());
    hello.mutable_hello()->set_client(kClientName);
    v1::SessionResponse response;
    if (!session->Write(hello) || !session->Read(&response)) {
      grpc::Status status = session->Finish();
      session.reset();
      session_ctx.reset();
      return Convert(status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "session closed") : status, "Session");
    }
    session_id = response.session_id();
    return session_id;
  }

  void CloseSession() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (session) {
      session_ctx->TryCancel();
      session->Finish();
    }
    session.reset();
    session_ctx.reset();
    session_id = 0;
  }
};

Client::Client(ClientOptions options) : impl_(new Impl) {
  if (options.socket.empty()) options.socket = DefaultSocketPath();
  impl_->options = std::move(options);
}

Client::~Client() {
  if (::getpid() != impl_->pid) {
    // After fork: the gRPC objects belong to the parent; never touch them.
    (void)impl_.release();
    return;
  }
  {
    absl::MutexLock lock(&impl_->lease_mu);
    impl_->stopping = true;
  }
  if (impl_->lease_thread.joinable()) impl_->lease_thread.join();
  absl::MutexLock lock(&impl_->mu);
  impl_->CloseSession();
}

std::shared_ptr<Client> Client::Create(ClientOptions options) {
  return std::shared_ptr<Client>(new Client(std::move(options)));
}

std::shared_ptr<Client> Client::ForThisProcess() { return ForThisProcess(""); }

std::shared_ptr<Client> Client::ForThisProcess(const std::string& socket) {
  static std::mutex mu;
  // Leaked on purpose (see ~Client); a child's first call starts afresh
  // and never touches the clients inherited from its parent.
  static auto* clients = new std::map<std::string, std::shared_ptr<Client>>();
  static pid_t owner = 0;
  // The default resolves now ($ZEROCOPY_SOCKET may have changed since).
  const std::string key = socket.empty() ? DefaultSocketPath() : socket;
  std::lock_guard<std::mutex> lock(mu);
  if (owner != ::getpid()) {
    clients = new std::map<std::string, std::shared_ptr<Client>>();
    owner = ::getpid();
  }
  std::shared_ptr<Client>& client = (*clients)[key];
  if (!client) {
    ClientOptions options;
    options.socket = key;
    client = Create(options);
  }
  return client;
}

const std::string& Client::socket() const { return impl_->options.socket; }

absl::StatusOr<uint64_t> Client::SessionId() {
  ZC_RETURN_IF_ERROR(impl_->Stub().status());
  absl::MutexLock lock(&impl_->mu);
  if (impl_->session_id != 0) return impl_->session_id;
  return impl_->OpenSession();
}

#define ZC_CALL(method, request, response)                        \
  ZC_ASSIGN_OR_RETURN(v1::ModelStore::Stub* stub, impl_->Stub()); \
  grpc::ClientContext ctx;                                        \
  impl_->Prepare(&ctx);                                           \
  ZC_RETURN_IF_ERROR(impl_->Convert(stub->method(&ctx, request, &response), #method))

absl::StatusOr<v1::ModelInfo> Client::Publish(const ModelSource& source, const PublishOptions& options) {
  ZC_RETURN_IF_ERROR(ValidateManifest(source.manifest));
  ZC_RETURN_IF_ERROR(ValidateOrigin(options.origin));  // before any byte moves
  if (source.storage_data.size() != static_cast<size_t>(source.manifest.storages_size())) {
    return absl::InvalidArgumentError(absl::StrCat(source.storage_data.size(), " storage pointers for ",
                                                   source.manifest.storages_size(), " storages"));
  }
  v1::CreateModelRequest create;
  *create.mutable_manifest() = source.manifest;
  create.set_name(options.name);
  create.set_pin(options.pin);
  v1::CreateModelResponse created;
  { ZC_CALL(CreateModel, create, created); }
  auto abort = [&](const absl::Status& why) {
    AbortStaging(created.staging_id());
    return why;
  };
  const v1::Manifest& layout = created.manifest();
  const uint64_t total = layout.total_size();
  if (layout.storages_size() != source.manifest.storages_size()) {
    return abort(absl::InternalError("the daemon's layout has a different storage count"));
  }
  std::vector<Hash128> leaves(DigestLeafCount(total));
  {
    auto opened = OpenStaging(created.segment_path(), total);
    if (!opened.ok()) return abort(opened.status());
    UniqueFd fd = *std::move(opened);
    std::atomic<uint64_t> done{0};
    absl::Mutex failed_mu;
    absl::Status failed;
    // Chunk i covers [i*C, (i+1)*C). Every storage overlapping it is
    // hashed and written with pwrite a slice at a time, so that the write
    // copies what the hash just read into cache. No mapping of the file:
    // the kernel allocates each page as the write fills it (a page filled
    // whole is not zeroed first) with no page tables to tear down before
    // the commit, and a full file system is an error of the write (never a
    // SIGBUS). What the layout pads between storages (under 64 bytes) is
    // zero in the file, where no write reaches, and the leaf hashes it as
    // zeros. Storages are in offset order. A storage that changes while it
    // is published may differ from what was hashed: the daemon's digest
    // check then refuses the commit (nothing is kept), where copying first
    // and hashing the copy would have kept a torn model.
    std::atomic<bool> stop{false};  // a write failed: the other chunks need not be written
    ParallelFor(leaves.size(), impl_->options.copy_threads, [&](size_t i) {
      if (stop.load(std::memory_order_relaxed)) return;
      const uint64_t begin = static_cast<uint64_t>(i) * kDigestChunk;
      const uint64_t end = std::min<uint64_t>(begin + kDigestChunk, total);
      LeafHasher leaf;
      uint64_t at = begin;  // hashed up to here
      auto first = std::upper_bound(layout.storages().begin(), layout.storages().end(), begin,
                                    [](uint64_t v, const v1::Storage& s) { return v < s.offset(); });
      int s = static_cast<int>(first - layout.storages().begin()) - 1;
      if (s < 0) s = 0;
      for (; s < layout.storages_size() && layout.storages(s).offset() < end; ++s) {
        const uint64_t s_begin = layout.storages(s).offset();
        const uint64_t s_end = s_begin + layout.storages(s).size();
        const uint64_t lo = std::max(begin, s_begin), hi = std::min(end, s_end);
        if (lo >= hi) continue;
        leaf.UpdateZeros(lo - at);
        const auto* from = static_cast<const uint8_t*>(source.storage_data[s]) + (lo - s_begin);
        for (uint64_t off = lo; off < hi; off += kPublishSlice) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(kPublishSlice, hi - off));
          leaf.Update(from + (off - lo), n);
          if (absl::Status written = WriteAllAt(fd.get(), from + (off - lo), n, off, created.segment_path());
              !written.ok()) {
            stop.store(true, std::memory_order_relaxed);
            absl::MutexLock lock(&failed_mu);
            failed.Update(written);
            return;
          }
        }
        at = hi;
      }
      leaf.UpdateZeros(end - at);
      leaves[i] = leaf.Finish();
      uint64_t now = done.fetch_add(end - begin) + (end - begin);
      if (options.progress) options.progress(now, total);
    });
    if (!failed.ok()) return abort(failed);
  }
  v1::Origin origin = options.origin;
  if (origin.kind().empty()) origin.set_kind("published");
  auto committed = CommitStaging(created.staging_id(), CombineDigest(leaves, layout), total, origin);
  if (!committed.ok()) return abort(committed.status());  // a failed commit already dropped it; abort is harmless
  return committed;
}

absl::Status Client::Health() {
  ZC_RETURN_IF_ERROR(impl_->Stub().status());  // makes the channel
  std::shared_ptr<grpc::Channel> channel;
  {
    absl::MutexLock lock(&impl_->mu);
    channel = impl_->channel;
  }
  // No generated stub for grpc.health.v1 in Debian's gRPC: the messages by
  // hand. An empty HealthCheckRequest (every service) is zero bytes; the
  // answer is field 1, the status, as a varint (1: SERVING).
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  grpc::CompletionQueue cq;
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1), response;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  ZC_RETURN_IF_ERROR(impl_->Convert(status, "Health/Check"));
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  const int value = bytes.size() == 2 && bytes[0] == '\x08' ? static_cast<unsigned char>(bytes[1]) : 0;
  if (value == 1) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("zerocopyd at ", impl_->options.socket, " answers ",
                                             value < 4 ? kNames[value] : "an unknown status", ", not SERVING"));
}

absl::StatusOr<v1::ModelInfo> Client::CommitStaging(const std::string& staging_id, const std::string& digest,
                                                    uint64_t size, const v1::Origin& origin) {
  v1::CommitModelRequest commit;
  commit.set_staging_id(staging_id);
  commit.set_digest(digest);
  *commit.mutable_origin() = origin;
  v1::CommitModelResponse committed;
  ZC_ASSIGN_OR_RETURN(v1::ModelStore::Stub * stub, impl_->Stub());
  grpc::ClientContext ctx;
  // The daemon rehashes the whole segment before answering: allow for it
  // (at a pessimistic 256 MiB/s) on top of the usual deadline.
  impl_->Prepare(&ctx, impl_->options.timeout + std::chrono::milliseconds(size / (256u << 10)));
  ZC_RETURN_IF_ERROR(impl_->Convert(stub->CommitModel(&ctx, commit, &committed), "CommitModel"));
  return committed.model();
}

void Client::AbortStaging(const std::string& staging_id) {
  if (!impl_->CheckProcess().ok()) return;
  v1::AbortModelRequest request;
  request.set_staging_id(staging_id);
  v1::AbortModelResponse response;
  if (auto stub = impl_->Stub(); stub.ok()) {
    grpc::ClientContext ctx;
    impl_->Prepare(&ctx);
    (*stub)->AbortModel(&ctx, request, &response);  // best effort: the daemon reclaims it when this process exits
  }
}

absl::StatusOr<std::unique_ptr<IncomingModel>> Client::Receive(const v1::Manifest& manifest,
                                                               const std::string& digest) {
  if (!IsDigest(digest)) return absl::InvalidArgumentError(absl::StrCat("'", digest, "' is not a digest"));
  ZC_RETURN_IF_ERROR(ValidateManifest(manifest));
  v1::CreateModelRequest create;
  *create.mutable_manifest() = manifest;
  create.set_expected_digest(digest);
  v1::CreateModelResponse created;
  { ZC_CALL(CreateModel, create, created); }
  const uint64_t total = created.manifest().total_size();
  auto fail = [&](const absl::Status& why) {
    AbortStaging(created.staging_id());
    return why;
  };
  // The bytes arrive in the source daemon's layout: this daemon's must be
  // the same (it is, unless the two versions lay models out differently).
  bool same_layout = manifest.total_size() == total;
  for (int i = 0; same_layout && i < manifest.storages_size(); ++i) {
    same_layout = manifest.storages(i).offset() == created.manifest().storages(i).offset();
  }
  if (!same_layout) {
    return fail(absl::InvalidArgumentError(absl::StrCat("model ", digest, " is laid out differently here (", total,
                                                        " bytes) than where it comes from (", manifest.total_size(),
                                                        " bytes): are the two nodes' zerocopyd versions different?")));
  }
  auto fd = OpenStaging(created.segment_path(), total);
  if (!fd.ok()) return fail(fd.status());
  return std::unique_ptr<IncomingModel>(new IncomingModel(shared_from_this(), digest, created.staging_id(),
                                                          std::move(*created.mutable_manifest()), *std::move(fd),
                                                          created.segment_path()));
}

absl::StatusOr<ModelAnswer> Client::Fetch(v1::GetModelRequest request, std::chrono::milliseconds timeout) {
  request.set_manifest_as_bytes(true);
  // The manifests this client holds: the daemon leaves the model's out when
  // it is one of them (a digest covers its manifest). Not on GPU requests.
  if (request.gpu_uuid().empty()) {
    for (auto& digest : impl_->manifests.Recent(kManifestsHeld)) request.add_manifests_held(std::move(digest));
  }
  ZC_ASSIGN_OR_RETURN(v1::ModelStore::Stub * stub, impl_->Stub());
  for (;;) {
    v1::GetModelResponse response;
    grpc::ClientContext ctx;
    impl_->Prepare(&ctx, timeout);
    ZC_RETURN_IF_ERROR(impl_->Convert(stub->GetModel(&ctx, request, &response), "GetModel"));
    std::shared_ptr<const v1::Manifest> manifest;
    if (response.manifest_omitted()) {
      manifest = impl_->manifests.Find(response.model().digest());
      if (manifest == nullptr) {
        // Dropped from the cache since the request was made (or a daemon
        // answering for a digest we never listed): ask again, holding none.
        // A lease taken already is the same lease again.
        if (request.manifests_held_size() == 0) {
          return absl::InternalError(absl::StrCat("zerocopyd left out the manifest of model ",
                                                  response.model().digest(),
                                                  ", which this client did not claim to hold"));
        }
        request.clear_manifests_held();
        continue;
      }
    } else if (response.has_manifest()) {  // a daemon that predates manifest_as_bytes
      manifest = std::make_shared<const v1::Manifest>(std::move(*response.mutable_manifest()));
    } else {
      ZC_ASSIGN_OR_RETURN(manifest, impl_->manifests.Parse(response.model().digest(), response.manifest_bytes()));
    }
    ModelAnswer answer(std::move(*response.mutable_model()), std::move(manifest),
                       std::move(*response.mutable_device()));
    answer.leaves_ = std::move(*response.mutable_leaves());
    return answer;
  }
}

absl::StatusOr<ModelAnswer> Client::Get(const std::string& ref, bool with_leaves) {
  v1::GetModelRequest request;
  request.mutable_model()->set_ref(ref);
  request.set_with_leaves(with_leaves);
  return Fetch(std::move(request), impl_->options.timeout);
}

absl::StatusOr<ModelAnswer> Client::GetOnSession(v1::GetModelRequest request, std::chrono::milliseconds timeout,
                                                 uint64_t* session_id) {
  ZC_ASSIGN_OR_RETURN(*session_id, SessionId());
  request.set_session_id(*session_id);
  auto answer = Fetch(std::move(request), timeout);
  if (IsUnknownSession(answer.status())) {
    // The daemon restarted and forgot our session: the next call opens a new one.
    absl::MutexLock lock(&impl_->mu);
    // Another thread may have reopened it already: close only the stale one.
    if (impl_->session_id == *session_id) impl_->CloseSession();
  }
  return answer;
}

std::function<void()> Client::Releaser(uint64_t session_id, std::string digest, std::string gpu_uuid) {
  // The mapping holds the client (and so its session and lease) alive.
  std::shared_ptr<Client> self = shared_from_this();
  return [self, session_id, digest = std::move(digest), gpu_uuid = std::move(gpu_uuid)] {
    if (!self->impl_->CheckProcess().ok()) return;
    auto stub = self->impl_->Stub();
    if (!stub.ok()) return;
    v1::ReleaseModelRequest request;
    request.set_session_id(session_id);
    request.set_digest(digest);
    request.set_gpu_uuid(gpu_uuid);
    v1::ReleaseModelResponse response;
    grpc::ClientContext ctx;
    self->impl_->Prepare(&ctx, std::chrono::milliseconds(2000));
    (*stub)->ReleaseModel(&ctx, request, &response);  // best effort: the session end releases it anyway
  };
}

namespace {

// The daemon's committed model `digest` read straight from `segment_path`
// (segment_layout.h: <dir>/<digest>.seg, its record beside it): the record,
// once the directory and both files prove to be the daemon's (owned by its
// uid, writable by nobody else: their bytes are the ones it hashed and
// sealed) and the directory the one it serves now (its .lock names the
// inode of the daemon's socket). NOT_FOUND when a file is missing; FAILED_PRECONDITION when
// something is not provably the daemon's.
absl::StatusOr<v1::ModelRecord> ReadSealedRecord(const std::string& digest, const std::string& segment_path,
                                                 const struct stat& socket) {
  const uid_t daemon_uid = socket.st_uid;
  const std::string name = SegmentFileName(digest);
  const size_t slash = segment_path.rfind('/');
  if (!IsDigest(digest) || slash == std::string::npos ||
      segment_path.compare(slash + 1, std::string::npos, name) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(segment_path, " is not the segment of ", digest));
  }
  const std::string dir = segment_path.substr(0, slash);
  UniqueFd dir_fd(::open(dir.empty() ? "/" : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return ErrnoStatus(errno, absl::StrCat("open ", dir));
  auto owned = [&](int fd, mode_t forbidden, const std::string& what) -> absl::Status {
    struct stat st;
    if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", what));
    if (st.st_uid != daemon_uid || (st.st_mode & forbidden) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(what, " is not sealed by zerocopyd's user ", daemon_uid));
    }
    return absl::OkStatus();
  };
  ZC_RETURN_IF_ERROR(owned(dir_fd.get(), S_IWGRP | S_IWOTH, dir));
  // The directory the daemon at our socket serves now (its lock file names
  // that socket's inode: SegmentStore::RecordServing), not one another
  // daemon, or a dead one, left.
  const std::string lock_path = absl::StrCat(dir, "/", kLockFileName);
  UniqueFd lock(::openat(dir_fd.get(), kLockFileName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!lock) return ErrnoStatus(errno, absl::StrCat("open ", lock_path));
  ZC_RETURN_IF_ERROR(owned(lock.get(), S_IWGRP | S_IWOTH, lock_path));
  char holder[64] = {};
  const ssize_t got = ::pread(lock.get(), holder, sizeof holder - 1, 0);
  const std::optional<uint64_t> inode =
      ServingSocketInode(absl::string_view(holder, got > 0 ? static_cast<size_t>(got) : 0));
  if (!inode || *inode != static_cast<uint64_t>(socket.st_ino)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not the directory of the zerocopyd at our socket"));
  }
  UniqueFd segment(::openat(dir_fd.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!segment) return ErrnoStatus(errno, absl::StrCat("open ", segment_path));
  ZC_RETURN_IF_ERROR(owned(segment.get(), S_IWUSR | S_IWGRP | S_IWOTH, segment_path));
  const std::string record_name = RecordFileName(digest);
  UniqueFd manifest(::openat(dir_fd.get(), record_name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!manifest) return ErrnoStatus(errno, absl::StrCat("open ", dir, "/", record_name));
  ZC_RETURN_IF_ERROR(owned(manifest.get(), S_IWUSR | S_IWGRP | S_IWOTH, record_name));
  ZC_ASSIGN_OR_RETURN(std::string bytes, ReadAll(manifest.get(), record_name, kMaxMessage));
  v1::ModelRecord record;
  if (!record.ParseFromString(bytes) || record.digest() != digest) {
    return absl::FailedPreconditionError(absl::StrCat(record_name, " does not hold model ", digest));
  }
  return record;
}

}  // namespace

absl::StatusOr<std::shared_ptr<MappedModel>> Client::MapSegment(const std::string& digest,
                                                                const std::string& segment_path,
                                                                const MapOptions& options) {
  ZC_RETURN_IF_ERROR(impl_->CheckProcess());
  struct stat socket_st;
  if (::stat(impl_->options.socket.c_str(), &socket_st) != 0) return Map(digest, options);  // Map says why
  auto record = ReadSealedRecord(digest, segment_path, socket_st);
  if (!record.ok()) return Map(digest, options);  // not here (another node, evicted) or not provably the daemon's
  v1::ModelInfo info = InfoFromRecord(*record, segment_path);
  auto lease = std::make_shared<BackgroundLease>();
  std::shared_ptr<Client> self = shared_from_this();
  auto release = [self, lease, digest] {
    uint64_t session_id;
    {
      absl::MutexLock lock(&lease->mu);
      if (lease->stage == BackgroundLease::Stage::kAsked) {
        lease->dropped = true;  // the lease thread gives it back when it comes
        return;
      }
      if (lease->stage != BackgroundLease::Stage::kHeld) return;
      session_id = lease->session_id;
    }
    self->Releaser(session_id, digest, "")();
  };
  auto manifest = std::make_shared<const v1::Manifest>(std::move(*record->mutable_manifest()));
  auto mapped = MappedModel::Open(segment_path, std::move(info), manifest, options, std::move(release));
  // The daemon's own manifest of that digest (checked by Open): the lease's
  // GetModel, and any later one, need not bring it again.
  if (mapped.ok()) impl_->manifests.Insert(digest, std::move(manifest));
  if (!mapped.ok()) {
    {
      absl::MutexLock lock(&lease->mu);
      lease->stage = BackgroundLease::Stage::kRefused;  // never asked
    }
    return Map(digest, options);
  }
  absl::MutexLock lock(&impl_->lease_mu);
  impl_->pending.emplace_back(digest, std::move(lease));
  if (!impl_->lease_thread.joinable()) impl_->lease_thread = std::thread([this] { LeaseLoop(); });
  return mapped;
}

void Client::LeaseLoop() {
  Impl& impl = *impl_;
  for (;;) {
    std::pair<std::string, std::shared_ptr<BackgroundLease>> job;
    {
      absl::MutexLock lock(&impl.lease_mu);
      impl.lease_mu.Await(absl::Condition(
          +[](Impl* i) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !i->pending.empty() || i->stopping; }, &impl));
      if (impl.pending.empty()) return;  // stopping
      job = std::move(impl.pending.front());
      impl.pending.pop_front();
      ++impl.asking;
    }
    auto& [digest, lease] = job;
    bool wanted;
    {
      absl::MutexLock lock(&lease->mu);
      wanted = !lease->dropped;
      if (!wanted) lease->stage = BackgroundLease::Stage::kRefused;
    }
    if (wanted) {
      v1::GetModelRequest request;
      request.mutable_model()->set_ref(digest);
      request.set_lease(true);
      uint64_t session_id = 0;
      absl::StatusOr<ModelAnswer> response;
      for (int attempt = 0; attempt < 3; ++attempt) {
        response = GetOnSession(request, impl.options.timeout, &session_id);
        if (!IsUnknownSession(response.status())) break;
      }
      bool give_back = false;
      {
        absl::MutexLock lock(&lease->mu);
        // Refused (evicted or deleted meanwhile): the mapping stays valid,
        // unleased.
        lease->stage = response.ok() ? BackgroundLease::Stage::kHeld : BackgroundLease::Stage::kRefused;
        lease->session_id = session_id;
        give_back = response.ok() && lease->dropped;
      }
      if (give_back) Releaser(session_id, digest, "")();
    }
    absl::MutexLock lock(&impl.lease_mu);
    --impl.asking;
  }
}

void Client::WaitForLeases() {
  absl::MutexLock lock(&impl_->lease_mu);
  impl_->lease_mu.Await(absl::Condition(
      +[](Impl* i) ABSL_NO_THREAD_SAFETY_ANALYSIS { return i->pending.empty() && i->asking == 0; }, impl_.get()));
}

absl::StatusOr<std::shared_ptr<MappedModel>> Client::Map(const std::string& ref, const MapOptions& options) {
  v1::GetModelRequest request;
  request.mutable_model()->set_ref(ref);
  request.set_lease(true);
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    uint64_t session_id = 0;
    auto response = GetOnSession(request, impl_->options.timeout, &session_id);
    if (IsUnknownSession(response.status())) {
      last = response.status();
      continue;
    }
    ZC_RETURN_IF_ERROR(response.status());
    std::string path = response->model().segment_path();
    auto release = Releaser(session_id, response->model().digest(), "");
    // Should Open fail, it has given the lease back already.
    auto mapped = MappedModel::Open(path, std::move(response->model_), std::move(response->manifest_), options,
                                    std::move(release));
    if (mapped.ok()) return mapped;
    // Deleted between GetModel and open: ask again (it may be gone for good).
    if (!absl::IsNotFound(mapped.status())) return mapped.status();
    last = mapped.status();
  }
  return last;
}

absl::StatusOr<std::shared_ptr<DeviceModel>> Client::MapDevice(const std::string& ref, int ordinal) {
  auto uuid = GpuUuid(ordinal);
  if (!uuid.ok()) return absl::FailedPreconditionError(absl::StrCat("GPU ", ordinal, ": ", uuid.status().message()));
  return MapDevice(ref, *uuid);
}

absl::StatusOr<std::shared_ptr<DeviceModel>> Client::MapDevice(const std::string& ref, const std::string& gpu_uuid) {
  // This process must see the GPU before the daemon copies anything to it.
  ZC_RETURN_IF_ERROR(GpuOrdinal(gpu_uuid).status());
  v1::GetModelRequest request;
  request.mutable_model()->set_ref(ref);
  request.set_gpu_uuid(gpu_uuid);
  // The first request per GPU waits for the upload: allow two minutes for
  // it (100 GB at a pessimistic 1 GB/s) on top of the usual deadline.
  const auto timeout = impl_->options.timeout + std::chrono::minutes(2);
  absl::Status last;
  for (int attempt = 0; attempt < 2; ++attempt) {
    uint64_t session_id = 0;
    auto response = GetOnSession(request, timeout, &session_id);
    if (IsUnknownSession(response.status())) {
      last = response.status();
      continue;
    }
    ZC_RETURN_IF_ERROR(response.status());
    auto release = Releaser(session_id, response->model().digest(), gpu_uuid);
    // Should Open fail, it has given the lease back already.
    return DeviceModel::Open(std::move(response->model_), std::move(response->manifest_), response->device(),
                             std::move(release));
  }
  return last;
}

absl::StatusOr<v1::ListModelsResponse> Client::List() {
  v1::ListModelsRequest request;
  v1::ListModelsResponse response;
  ZC_CALL(ListModels, request, response);
  return response;
}

absl::StatusOr<std::string> Client::Delete(const std::string& ref, bool force) {
  v1::DeleteModelRequest request;
  request.mutable_model()->set_ref(ref);
  request.set_force(force);
  v1::DeleteModelResponse response;
  ZC_CALL(DeleteModel, request, response);
  return response.digest();
}

absl::StatusOr<v1::ModelInfo> Client::Tag(const std::string& name, const std::string& ref) {
  v1::TagModelRequest request;
  request.set_name(name);
  request.mutable_model()->set_ref(ref);
  v1::TagModelResponse response;
  ZC_CALL(TagModel, request, response);
  return response.model();
}

absl::StatusOr<v1::ModelInfo> Client::Pin(const std::string& ref, bool pinned) {
  v1::PinModelRequest request;
  request.mutable_model()->set_ref(ref);
  v1::PinModelResponse response;
  if (pinned) {
    ZC_CALL(PinModel, request, response);
  } else {
    ZC_CALL(UnpinModel, request, response);
  }
  return response.model();
}

absl::StatusOr<v1::GetStatsResponse> Client::Stats() {
  v1::GetStatsRequest request;
  v1::GetStatsResponse response;
  ZC_CALL(GetStats, request, response);
  return response;
}

absl::StatusOr<std::string> Client::PrometheusText() {
  v1::GetStatsRequest request;
  request.set_prometheus(true);
  v1::GetStatsResponse response;
  ZC_CALL(GetStats, request, response);
  return std::move(*response.mutable_prometheus_text());
}

}  // namespace zerocopy
