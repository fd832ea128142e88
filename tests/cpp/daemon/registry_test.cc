// ModelRegistry without gRPC, over a real segment directory: the leases a
// GetModel takes are objects that give themselves back unless handed to
// the session.
#include "model_registry.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support.h"
#include "zerocopy/digest.h"
#include "zerocopy/mapped_region.h"

namespace zerocopy::daemon {
namespace {

Peer Me() {
  Peer p;
  p.pid = ::getpid();
  p.uid = ::getuid();
  p.gid = ::getgid();
  p.known = true;
  return p;
}

struct Registry {
  testing::TempDir dir{"/dev/shm"};
  std::unique_ptr<ModelRegistry> registry;

  Registry() {
    auto store = SegmentStore::Open(dir.path() + "/segments", static_cast<gid_t>(-1));
    REQUIRE(store.ok());
    RegistryOptions options;
    options.host_budget = 64 << 20;
    registry = std::make_unique<ModelRegistry>(std::move(*store), options);
  }

  // Publishes through Create, a write of the segment and Commit, as a
  // client does; returns the digest.
  std::string Publish(const testing::TestModel& model) {
    v1::CreateModelRequest create;
    *create.mutable_manifest() = model.source.manifest;
    auto created = registry->Create(create, Me());
    REQUIRE(created.ok());
    const v1::Manifest& laid_out = created->manifest();
    std::string segment(laid_out.total_size(), '\0');
    for (int i = 0; i < laid_out.storages_size(); ++i) {
      std::memcpy(&segment[laid_out.storages(i).offset()], model.source.storage_data[i], laid_out.storages(i).size());
    }
    int fd = ::open(created->segment_path().c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, segment.data(), segment.size(), 0) == static_cast<ssize_t>(segment.size()));
    ::close(fd);
    v1::CommitModelRequest commit;
    commit.set_staging_id(created->staging_id());
    commit.set_digest(ComputeDigest(reinterpret_cast<const uint8_t*>(segment.data()), segment.size(), laid_out));
    auto committed = registry->Commit(commit, Me());
    REQUIRE(committed.ok());
    return committed->model().digest();
  }

  uint32_t Leases() { return registry->List().models(0).leases(); }
};

v1::GetModelRequest LeaseOf(const std::string& digest, uint64_t session) {
  v1::GetModelRequest get;
  get.mutable_model()->set_ref(digest);
  get.set_session_id(session);
  get.set_lease(true);
  return get;
}

TEST_CASE("a lease not handed to the session goes back when dropped", "[registry]") {
  Registry r;
  auto model = testing::MakeModel(3, 256, 1);
  const std::string digest = r.Publish(model);
  const uint64_t session = r.registry->OpenSession(Me());
  {
    auto leased = r.registry->Get(LeaseOf(digest, session), Me());
    REQUIRE(leased.ok());
    CHECK(static_cast<bool>(leased->host));
    CHECK(r.Leases() == 1);
  }  // a call that failed after leasing, or whose caller went away
  CHECK(r.Leases() == 0);

  auto kept = r.registry->Get(LeaseOf(digest, session), Me());
  REQUIRE(kept.ok());
  kept->host.HandOver();
  kept = absl::CancelledError("dropped");  // the object goes; the session keeps the lease
  CHECK(r.Leases() == 1);
  r.registry->CloseSession(session);
  CHECK(r.Leases() == 0);
}

TEST_CASE("a GPU request that fails after the host lease gives the host lease back", "[registry]") {
  Registry r;  // no GPU backend: every device copy is refused
  const std::string digest = r.Publish(testing::MakeModel(2, 64, 2));
  const uint64_t session = r.registry->OpenSession(Me());
  v1::GetModelRequest get = LeaseOf(digest, session);
  get.set_gpu_uuid("GPU-00000000-0000-0000-0000-000000000000");
  auto leased = r.registry->Get(get, Me());
  REQUIRE_FALSE(leased.ok());
  CHECK(r.Leases() == 0);
}

TEST_CASE("a lease outliving its session is no error", "[registry]") {
  Registry r;
  const std::string digest = r.Publish(testing::MakeModel(1, 64, 3));
  const uint64_t session = r.registry->OpenSession(Me());
  auto leased = r.registry->Get(LeaseOf(digest, session), Me());
  REQUIRE(leased.ok());
  r.registry->CloseSession(session);  // its process exited meanwhile
  CHECK(r.Leases() == 0);
  leased = absl::CancelledError("dropped");  // gives back to a session that is gone: nothing happens
  CHECK(r.Leases() == 0);
}

TEST_CASE("an eviction keeps the model's names and a leased model is never evicted", "[registry]") {
  Registry r;
  const uint64_t session = r.registry->OpenSession(Me());
  // 64 MiB budget, 24 MiB models: the third evicts the least recently
  // used one that is not leased.
  auto first = testing::MakeModel(1, 6 << 20, 4);
  auto second = testing::MakeModel(1, 6 << 20, 5);
  const std::string a = r.Publish(first);
  const std::string b = r.Publish(second);
  v1::TagModelRequest tag;
  tag.set_name("second");
  tag.mutable_model()->set_ref(b);
  REQUIRE(r.registry->Tag(tag, Me()).ok());
  auto leased = r.registry->Get(LeaseOf(a, session), Me());  // a is used last, and leased
  REQUIRE(leased.ok());
  leased->host.HandOver();
  r.Publish(testing::MakeModel(1, 6 << 20, 6));
  v1::GetModelRequest by_name;
  by_name.mutable_model()->set_ref("second");
  auto gone = r.registry->Get(by_name, Me());
  CHECK(gone.status().code() == absl::StatusCode::kNotFound);
  CHECK_THAT(std::string(gone.status().message()), Catch::Contains("evicted") && Catch::Contains(b));
  v1::GetModelRequest by_digest;
  by_digest.mutable_model()->set_ref(a);
  CHECK(r.registry->Get(by_digest, Me()).ok());
  CHECK(r.registry->Stats().evictions() == 1);
}

}  // namespace
}  // namespace zerocopy::daemon
