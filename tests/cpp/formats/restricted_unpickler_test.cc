// The restricted unpickler on its own, with pickles written by hand: what
// it builds, and what it refuses (anything that would import or call).
#include "restricted_unpickler.h"

#include <string>

#include <catch2/catch.hpp>

namespace zerocopy::pickle {
namespace {

absl::StatusOr<Unpickled> Run(const std::string& bytes, StorageSource* storages = nullptr) {
  return Unpickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), {"test.pkl"}, storages);
}

// BINUNICODE of a short string.
std::string Str(const std::string& s) {
  return std::string("X") + static_cast<char>(s.size()) + std::string(3, '\0') + s;
}

TEST_CASE("plain values build a tree of objects the caller owns", "[unpickler]") {
  // {"a": 1, "b": [True, None, "x"]}, protocol 2
  std::string p = std::string("\x80\x02}q\x00(", 6) + Str("a") + "K\x01" + Str("b") + "](\x88N" + Str("x") + "eu.";
  auto r = Run(p);
  REQUIRE(r.ok());
  const Obj* root = r->root;
  REQUIRE(root->kind == Kind::kDict);
  REQUIRE(root->dict.size() == 2);
  CHECK(root->dict[0].first->s == "a");
  CHECK(root->dict[0].second->kind == Kind::kInt);
  CHECK(root->dict[0].second->i == 1);
  const Obj* list = root->dict[1].second;
  REQUIRE(list->kind == Kind::kList);
  REQUIRE(list->items.size() == 3);
  CHECK(list->items[0]->kind == Kind::kBool);
  CHECK(list->items[0]->b);
  CHECK(list->items[1]->kind == Kind::kNone);
  CHECK(list->items[2]->s == "x");
  CHECK_FALSE(r->arena.empty());
}

TEST_CASE("a pickle ends at its STOP, which it reports, and may name no storage without a source", "[unpickler]") {
  // 1001, then bytes of something else (the legacy format's next pickle)
  auto r = Run(std::string("\x80\x02M\xe9\x03.\x80\x02N.", 10));
  REQUIRE(r.ok());
  CHECK(r->root->i == 1001);
  CHECK(r->end == 6);
  auto pid = Run(std::string("\x80\x02(") + Str("storage") + "tQ.");
  REQUIRE_FALSE(pid.ok());
  CHECK_THAT(std::string(pid.status().message()),
             Catch::Contains("test.pkl at byte") && Catch::Contains("a persistent id in a pickle that may hold none"));
}

TEST_CASE("a global that would run code is refused with where it stood", "[unpickler]") {
  // os.system("id"): GLOBAL, the argument, TUPLE1, REDUCE
  std::string p = std::string(
                      "\x80\x02"
                      "cos\nsystem\n",
                      13) +
                  Str("id") + "\x85R.";
  auto r = Run(p);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(r.status().message()),
             Catch::Contains("test.pkl at byte 2 (opcode 0x63)") && Catch::Contains("os.system"));
}

TEST_CASE("opcodes that build objects, sets or extensions are refused", "[unpickler]") {
  for (std::string op :
       {std::string("\x81"), std::string("\x8f"), std::string("\x82\x01")}) {  // NEWOBJ, EMPTY_SET, EXT1
    INFO(static_cast<int>(static_cast<unsigned char>(op[0])));
    auto r = Run(std::string("\x80\x02", 2) + op + ".");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("truncated pickles, underflows and unknown memo entries are refused", "[unpickler]") {
  for (const std::string& p : {std::string("\x80\x02}", 3),       // no STOP
                               std::string("\x80\x02u.", 4),      // SETITEMS with no MARK
                               std::string("\x80\x02h\x07.", 5),  // BINGET of nothing stored
                               std::string("\x80\x02X\xff\x00\x00\x00"
                                           "ab.",
                                           10)}) {  // string past the end
    auto r = Run(p);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("a pickle building more objects than its budget is refused", "[unpickler]") {
  std::string p("\x80\x02", 2);
  for (size_t i = 0; i < kMaxObjects + 10; ++i) p += "]";
  p += ".";
  auto r = Run(p);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("objects"));
}

}  // namespace
}  // namespace zerocopy::pickle
