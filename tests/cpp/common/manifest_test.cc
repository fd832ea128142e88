// Manifest rules: every way a client can describe a model badly is refused
// with a message that names what is wrong.
#include <limits>

#include <catch2/catch.hpp>

#include "zerocopy/manifest.h"

namespace zerocopy {
namespace {

Manifest OneTensor(int64_t n = 16) {
  Manifest m;
  m.add_storages()->set_size(static_cast<uint64_t>(n) * 4);
  auto* t = m.add_tensors();
  t->set_name("w");
  t->set_dtype(v1::F32);
  t->add_shape(n);
  return m;
}

void RequireInvalid(const Manifest& m, const std::string& needle) {
  auto status = ValidateManifest(m);
  INFO(status.ToString());
  REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
  REQUIRE_THAT(std::string(status.message()), Catch::Contains(needle));
}

TEST_CASE("a well-formed manifest validates", "[manifest]") {
  REQUIRE(ValidateManifest(OneTensor()).ok());
  Manifest m = OneTensor(6);
  auto* view = m.add_tensors();  // a transposed 2x3 view of the same storage
  view->set_name("w.T");
  view->set_dtype(v1::F32);
  view->add_shape(3);
  view->add_shape(2);
  view->add_strides(1);
  view->add_strides(3);
  REQUIRE(ValidateManifest(m).ok());
  REQUIRE_FALSE(IsContiguous(*view));
  REQUIRE(IsContiguous(m.tensors(0)));
}

TEST_CASE("bad manifests are refused with the reason", "[manifest]") {
  SECTION("tensor past the end of its storage") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_byte_offset(4);
    RequireInvalid(m, "outside its storage");
  }
  SECTION("byte offset + extent overflows") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_byte_offset(std::numeric_limits<uint64_t>::max() - 3);
    RequireInvalid(m, "'w'");
  }
  SECTION("shape product overflows") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->clear_shape();
    for (int i = 0; i < 4; ++i) m.mutable_tensors(0)->add_shape(int64_t{1} << 20);
    RequireInvalid(m, "'w'");
  }
  SECTION("negative dimension") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_shape(0, -1);
    RequireInvalid(m, "'w'");
  }
  SECTION("negative stride") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->add_strides(-1);
    RequireInvalid(m, "'w'");
  }
  SECTION("strides of the wrong rank") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->add_strides(1);
    m.mutable_tensors(0)->add_strides(1);
    RequireInvalid(m, "'w'");
  }
  SECTION("stride that reaches past the storage") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->add_strides(2);
    RequireInvalid(m, "outside its storage");
  }
  SECTION("missing storage") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_storage(1);
    RequireInvalid(m, "names storage 1");
  }
  SECTION("unknown dtype") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_dtype(static_cast<v1::DType>(999));
    RequireInvalid(m, "'w'");
  }
  SECTION("unspecified dtype") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_dtype(v1::DTYPE_UNSPECIFIED);
    RequireInvalid(m, "'w'");
  }
  SECTION("misaligned element") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_shape(0, 15);
    m.mutable_tensors(0)->set_byte_offset(2);
    RequireInvalid(m, "not a multiple");
  }
  SECTION("duplicate names") {
    Manifest m = OneTensor();
    *m.add_tensors() = m.tensors(0);
    RequireInvalid(m, "appears twice");
  }
  SECTION("empty name") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_name("");
    RequireInvalid(m, "empty name");
  }
  SECTION("NUL in a name") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_name(std::string("a\0b", 3));
    RequireInvalid(m, "NUL");
  }
  SECTION("name of 10,000 characters") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->set_name(std::string(10000, 'x'));
    RequireInvalid(m, "limit");
  }
  SECTION("rank above the limit") {
    Manifest m = OneTensor();
    m.mutable_tensors(0)->clear_shape();
    for (int i = 0; i < 40; ++i) m.mutable_tensors(0)->add_shape(1);
    m.mutable_storages(0)->set_size(4);
    RequireInvalid(m, "rank 40");
  }
  SECTION("storages that overflow the total") {
    Manifest m = OneTensor();
    m.add_storages()->set_size(std::numeric_limits<uint64_t>::max() - 10);
    RequireInvalid(m, "larger than the limit");
  }
  SECTION("too many tensors for the limits") {
    Manifest m = OneTensor();
    ManifestLimits limits;
    limits.max_tensors = 0;
    auto status = ValidateManifest(m, limits);
    REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("a tensor covers its storage when it is all of it, contiguous from its first byte", "[manifest]") {
  Manifest m = OneTensor(16);  // 64 bytes of F32
  REQUIRE(CoversStorage(m.tensors(0), m.storages(0)));
  m.mutable_storages(0)->set_size(68);  // a byte past the tensor
  REQUIRE_FALSE(CoversStorage(m.tensors(0), m.storages(0)));
  m = OneTensor(6);
  auto* t = m.mutable_tensors(0);
  t->clear_shape();
  t->add_shape(3);
  t->add_shape(2);
  t->add_strides(2);
  t->add_strides(1);
  REQUIRE(CoversStorage(*t, m.storages(0)));  // contiguous strides spelled out
  t->set_strides(0, 1);
  t->set_strides(1, 3);
  REQUIRE_FALSE(CoversStorage(*t, m.storages(0)));  // transposed: all the bytes, not in order
  m = OneTensor(4);
  m.mutable_storages(0)->set_size(20);
  m.mutable_tensors(0)->set_byte_offset(4);
  REQUIRE_FALSE(CoversStorage(m.tensors(0), m.storages(0)));  // starts past the first byte
}

// OneTensor plus a file of `bytes` bytes in a storage of its own.
Manifest WithFile(const std::string& name, uint64_t bytes = 10) {
  Manifest m = OneTensor();
  m.add_storages()->set_size(bytes);
  auto* f = m.add_files();
  f->set_name(name);
  f->set_storage(1);
  return m;
}

TEST_CASE("files kept with a model: relative names, a storage of their own, within the limits", "[manifest]") {
  REQUIRE(ValidateManifest(WithFile("config.json")).ok());
  REQUIRE(ValidateManifest(WithFile("tokenizer/vocab.txt")).ok());
  for (const char* bad : {"", "/etc/passwd", "a/../b", "..", "./config.json", "a//b", "a/", "tab\tname"}) {
    INFO(bad);
    RequireInvalid(WithFile(bad), "file name");
  }
  RequireInvalid(WithFile(std::string(256, 'x')), "parts of 1 to 255 bytes");
  RequireInvalid(WithFile("bad\xff"), "UTF-8");
  Manifest twice = WithFile("config.json");
  *twice.add_files() = twice.files(0);
  RequireInvalid(twice, "appears twice");
  Manifest tensor_storage = WithFile("config.json");
  tensor_storage.mutable_files(0)->set_storage(0);  // the tensor's
  RequireInvalid(tensor_storage, "which a tensor or another file uses");
  Manifest shared = WithFile("config.json");
  auto* other = shared.add_files();
  other->set_name("copy.json");
  other->set_storage(1);
  RequireInvalid(shared, "which a tensor or another file uses");
  Manifest past = WithFile("config.json");
  past.mutable_files(0)->set_storage(2);
  RequireInvalid(past, "names storage 2 of 2");
  ManifestLimits limits;
  limits.max_file_bytes = 9;
  auto status = ValidateManifest(WithFile("config.json", 10), limits);
  REQUIRE(status.code() == absl::StatusCode::kInvalidArgument);
  REQUIRE_THAT(std::string(status.message()), Catch::Contains("files take over 9 bytes"));
  limits = ManifestLimits();
  limits.max_files = 0;
  REQUIRE_THAT(std::string(ValidateManifest(WithFile("config.json"), limits).message()),
               Catch::Contains("1 files; the limit is 0"));
}

TEST_CASE("offsets are aligned and the layout is checked", "[manifest]") {
  Manifest m;
  for (uint64_t size : {3u, 100u, 0u, 64u}) m.add_storages()->set_size(size);
  REQUIRE(AssignOffsets(&m).ok());
  REQUIRE(m.storages(0).offset() == 0);
  REQUIRE(m.storages(1).offset() == 64);
  REQUIRE(m.storages(2).offset() == 192);
  REQUIRE(m.storages(3).offset() == 192);
  REQUIRE(m.total_size() == 256);
  for (const auto& s : m.storages()) REQUIRE(s.offset() % kStorageAlignment == 0);
  REQUIRE(CheckLayout(m).ok());
  m.mutable_storages(1)->set_offset(65);
  REQUIRE_FALSE(CheckLayout(m).ok());
}

TEST_CASE("model names", "[manifest]") {
  for (const char* good : {"llama-3.1-8b", "org:model@v2", "a", "x+y=z", "A_B"}) {
    INFO(good);
    REQUIRE(ValidateModelName(good).ok());
  }
  std::vector<std::string> bad = {"",
                                  "a/b",
                                  "..",
                                  "../etc",
                                  ".hidden",
                                  "-flag",
                                  std::string("a\0b", 3),
                                  std::string(10000, 'n'),
                                  "with space",
                                  "0123456789abcdef0123456789abcdef",
                                  "caf\xc3\xa9",
                                  ":x"};
  for (const auto& name : bad) {
    INFO(name);
    REQUIRE(ValidateModelName(name).code() == absl::StatusCode::kInvalidArgument);
  }
  REQUIRE(IsDigest("0123456789abcdef0123456789abcdef"));
  REQUIRE_FALSE(IsDigest("0123456789ABCDEF0123456789abcdef"));
  REQUIRE_FALSE(IsDigest("0123456789abcdef0123456789abcde"));
}

}  // namespace
}  // namespace zerocopy
