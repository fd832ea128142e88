// ModelView and its two kinds (the host mapping, a device copy): the
// manifest is checked before any byte is touched, and the lease is given
// back exactly once, when the view goes or when opening it fails.
#include "zerocopy/model_view.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support.h"
#include "zerocopy/device_model.h"
#include "zerocopy/manifest.h"
#include "zerocopy/mapped_model.h"

namespace zerocopy {
namespace {

v1::Manifest LaidOut(const testing::TestModel& model) {
  v1::Manifest m = model.source.manifest;
  REQUIRE(AssignOffsets(&m).ok());
  return m;
}

TEST_CASE("a host mapping gives its lease back once: when dropped, or when its open fails", "[model_view]") {
  testing::TempDir dir;
  auto model = testing::MakeModel(2, 64, 1);
  v1::Manifest manifest = LaidOut(model);
  const std::string path = dir.path() + "/segment";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(manifest.total_size())) == 0);
  ::close(fd);
  int released = 0;
  auto release = [&] { ++released; };

  SECTION("dropped") {
    auto mapped = MappedModel::Open(path, v1::ModelInfo(), manifest, MapOptions(), release);
    REQUIRE(mapped.ok());
    auto exported = (*mapped)->ToDLPack(1);
    REQUIRE(exported.ok());
    CHECK((*exported)->dl_tensor.data == (*mapped)->tensor(1).data);
    CHECK((*mapped)->IndexOf("layer.1.weight").value() == 1);
    CHECK((*mapped)->Find("nope").status().code() == absl::StatusCode::kNotFound);
    mapped = absl::CancelledError("dropped");
    CHECK(released == 0);  // the export still holds it
    (*exported)->deleter(*exported);
    CHECK(released == 1);
  }
  SECTION("a file of the wrong size") {
    REQUIRE(::truncate(path.c_str(), 10) == 0);
    auto mapped = MappedModel::Open(path, v1::ModelInfo(), manifest, MapOptions(), release);
    CHECK(mapped.status().code() == absl::StatusCode::kDataLoss);
    CHECK(released == 1);
  }
  SECTION("a file that is gone") {
    auto mapped = MappedModel::Open(path + ".gone", v1::ModelInfo(), manifest, MapOptions(), release);
    CHECK(mapped.status().code() == absl::StatusCode::kNotFound);
    CHECK(released == 1);
  }
  SECTION("a manifest that points outside the segment") {
    manifest.mutable_tensors(1)->set_byte_offset(1 << 20);
    auto mapped = MappedModel::Open(path, v1::ModelInfo(), manifest, MapOptions(), release);
    CHECK(mapped.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(released == 1);
  }
}

TEST_CASE("a device copy that cannot be opened gives its lease back once", "[model_view]") {
  auto model = testing::MakeModel(1, 64, 2);
  v1::Manifest manifest = LaidOut(model);
  v1::DeviceCopy copy;
  copy.set_gpu_uuid("GPU-00000000-0000-0000-0000-000000000000");
  copy.set_size(manifest.total_size() + 1);  // does not match the manifest
  copy.set_backend("fake");
  int released = 0;
  auto opened = DeviceModel::Open(v1::ModelInfo(), manifest, copy, [&] { ++released; });
  CHECK(opened.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(released == 1);
}

}  // namespace
}  // namespace zerocopy
