#include "legacy_torch_save.h"
#include "little_endian.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "zerocopy/dtype.h"
#include "zerocopy/status.h"

namespace zerocopy::internal {

namespace {

using pickle::Kind;
using pickle::KindName;
using pickle::Obj;
using pickle::Unpickled;

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

// LONG1 of 10 bytes: 0x1950a86a20f9469cfc6c, little-endian; then STOP.
constexpr uint8_t kMagic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
constexpr int64_t kProtocolVersion = 1001;

// The object's storages, by key: their bytes are found after the pickles.
class LegacyStorages : public pickle::StorageSource {
 public:
  bool legacy() const override { return true; }
  absl::Status Find(Obj* storage) override {
    by_key.emplace(storage->s, storage);
    return absl::OkStatus();
  }
  std::map<std::string, Obj*> by_key;
};

}  // namespace

std::optional<size_t> LegacyTorchMagicEnd(const uint8_t* data, size_t size) {
  // PROTO 2..5 (torch.save's pickle_protocol), a FRAME from protocol 4.
  if (size < 2 || data[0] != 0x80 || data[1] < 2 || data[1] > 5) return std::nullopt;
  size_t at = 2;
  if (data[1] >= 4 && size > at && data[at] == 0x95) at += 9;
  if (size < at || size - at < sizeof kMagic || std::memcmp(data + at, kMagic, sizeof kMagic) != 0) {
    return std::nullopt;
  }
  return at + sizeof kMagic;
}

absl::StatusOr<Unpickled> ReadLegacyTorchSave(const uint8_t* data, size_t size) {
  const std::optional<size_t> magic_end = LegacyTorchMagicEnd(data, size);
  if (!magic_end) return Invalid("not a legacy torch.save file: it does not start with torch's magic number");
  size_t at = *magic_end;
  // The next pickle, from `at`; all of them together within the budget.
  auto next = [&](const char* name, pickle::StorageSource* storages) -> absl::StatusOr<Unpickled> {
    pickle::PickleName where{name, at, size > pickle::kMaxPickleBytes};
    const size_t span = std::min(size, pickle::kMaxPickleBytes) - std::min(at, pickle::kMaxPickleBytes);
    ZC_ASSIGN_OR_RETURN(Unpickled u, pickle::Unpickle(data + at, span, where, storages));
    at += u.end;
    return u;
  };

  // The header pickles are checked and dropped: each pickle has the
  // object budget, and two (the object and its key list) live at once.
  {
    ZC_ASSIGN_OR_RETURN(Unpickled version, next("the protocol version pickle", nullptr));
    if (version.root->kind != Kind::kInt || version.root->i != kProtocolVersion) {
      return Invalid(absl::StrCat("the protocol version pickle holds ",
                                  version.root->kind == Kind::kInt ? std::to_string(version.root->i)
                                                                   : std::string("a ") + KindName(version.root->kind),
                                  ", not ", kProtocolVersion, ", which torch.load requires"));
    }
  }
  {
    // Its type sizes and byte order do not matter: storages are int64 and
    // little-endian on every machine.
    ZC_ASSIGN_OR_RETURN(Unpickled sys_info, next("the sys_info pickle", nullptr));
    if (sys_info.root->kind != Kind::kDict) {
      return Invalid(absl::StrCat("the sys_info pickle holds a ", KindName(sys_info.root->kind), ", not a dict"));
    }
  }
  LegacyStorages storages;
  ZC_ASSIGN_OR_RETURN(Unpickled object, next("the object pickle", &storages));
  const size_t keys_at = at;
  ZC_ASSIGN_OR_RETURN(Unpickled keys, next("the storage key pickle", nullptr));
  if (keys.root->kind != Kind::kList) {
    return Invalid(absl::StrCat("the storage key pickle (byte ", keys_at, ") holds a ", KindName(keys.root->kind),
                                ", not a list of keys"));
  }

  std::set<std::string> listed;
  const size_t n = keys.root->items.size();
  for (size_t i = 0; i < n; ++i) {
    const Obj* k = keys.root->items[i];
    if (k->kind != Kind::kString) {
      return Invalid(
          absl::StrCat("the storage key list (byte ", keys_at, ") holds a ", KindName(k->kind), ", not a key"));
    }
    const std::string& key = k->s;
    auto it = storages.by_key.find(key);
    if (it == storages.by_key.end()) {
      return Invalid(absl::StrCat("the storage key list names storage ", key, ", which the object does not use"));
    }
    if (!listed.insert(key).second) return Invalid(absl::StrCat("the storage key list names storage ", key, " twice"));
    Obj* s = it->second;
    const uint64_t numel = s->bytes / DTypeSize(s->dtype);
    if (size - at < 8) {
      return Invalid(absl::StrCat("storage ", key, " (", i + 1, " of ", n,
                                  ") has no element count: the file ends at byte ", size, " (truncated?)"));
    }
    const uint64_t count = Le64(data + at);
    if (count != numel) {
      return Invalid(absl::StrCat("storage ", key, " (", i + 1, " of ", n, ", byte ", at, ") holds ", count,
                                  " elements of ", DTypeName(s->dtype), " but the object pickle declares ", numel));
    }
    at += 8;
    if (size - at < s->bytes) {
      return Invalid(absl::StrCat("storage ", key, " (", i + 1, " of ", n, ") needs ", s->bytes, " bytes from byte ",
                                  at, " but the file ends at byte ", size, " (truncated?)"));
    }
    s->data = data + at;
    at += s->bytes;
  }
  for (const auto& [key, s] : storages.by_key) {
    if (!listed.count(key)) {
      return Invalid(
          absl::StrCat("storage ", key, " is used by the object pickle but missing from the storage key list"));
    }
  }
  return object;
}

}  // namespace zerocopy::internal
