// The restricted unpickler of torch.save files: runs a pickle's opcodes
// with a stack machine that builds only plain values (None, bools,
// numbers, strings, bytes, lists, tuples, dicts), storages (persistent
// ids, which a StorageSource finds: the zip archive's data/ records, or
// the legacy format's data after the pickles) and tensors
// (torch._utils._rebuild_tensor_v2/v3 over them). It never imports or
// calls anything: any other global, any object construction, set or
// extension opcode is refused with the byte offset and opcode. Budgets
// bound the objects it creates and how deeply they nest. It stops at the
// pickle's STOP and says where that was: the legacy format is several
// pickles in a row.
//
// Internal to formats/ (torch_save_file.cc flattens what it returns).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "zerocopy/dtype.h"

namespace zerocopy::pickle {

// Budgets against hostile pickles (real state dicts stay far below): the
// objects the unpickler may create (each ~200 bytes), how deeply values
// may nest (here and when they are flattened), and the bytes of pickle a
// file may hold (its strings are copied).
constexpr size_t kMaxObjects = 2u << 20;
constexpr size_t kMaxPickleBytes = 64u << 20;
constexpr int kMaxDepth = 64;

enum class Kind { kNone, kBool, kInt, kFloat, kString, kBytes, kList, kTuple, kDict, kGlobal, kStorage, kTensor };

const char* KindName(Kind k);

// A pickled value. All live in the unpickler's arena and point at each
// other by raw pointer, so cycles a hostile pickle builds leak nothing.
struct Obj {
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;                            // str, bytes, global "module.name"
  std::vector<Obj*> items;                  // list, tuple
  std::vector<std::pair<Obj*, Obj*>> dict;  // dict, in insertion order
  // storage: `bytes` bytes at `data` (set by its StorageSource), its key in
  // `s`; tensor: elements of `dtype`
  DType dtype = v1::DTYPE_UNSPECIFIED;
  const uint8_t* data = nullptr;
  uint64_t bytes = 0;
  // tensor: its storage, `offset` in elements. A storage view (legacy
  // format): its root storage, `offset` in bytes into it.
  Obj* storage = nullptr;
  int64_t offset = 0;
  std::vector<int64_t> shape, strides;
};

// Every value the pickle built (`root` among them), owned here: they point
// at each other by raw pointer. `end`: the bytes the pickle took, its STOP
// included.
struct Unpickled {
  std::vector<std::unique_ptr<Obj>> arena;
  Obj* root = nullptr;
  size_t end = 0;
};

// Where the storages that persistent ids name live. The unpickler checks
// the id (its shape, the storage type, numel) and the source finds the
// bytes.
class StorageSource {
 public:
  virtual ~StorageSource() = default;
  // Legacy ids carry a sixth element, the view metadata:
  // ('storage', type, key, location, numel, view); zip ones have five.
  virtual bool legacy() const = 0;
  // Called once per distinct key, with storage->dtype, ->bytes and ->s
  // (the key) set from the id: sets storage->data now, or keeps `storage`
  // to set it later (the legacy data follows the pickles), or says why it
  // cannot (INVALID_ARGUMENT).
  virtual absl::Status Find(Obj* storage) = 0;
};

// Where a pickle lies, for errors: `name` ("data.pkl") and the offset of
// its first byte in the file its byte offsets are counted from;
// `budget_ends`: the bytes given end at kMaxPickleBytes, not at the file's
// end.
struct PickleName {
  std::string name;
  uint64_t first_byte = 0;
  bool budget_ends = false;
};

// Runs the pickle at the start of `data`/`size` up to its STOP (bytes after
// it are not read). `storages` finds what persistent ids name; nullptr:
// the pickle may hold none. INVALID_ARGUMENT, naming the pickle, the byte
// offset and opcode, for anything it does not allow.
absl::StatusOr<Unpickled> Unpickle(const uint8_t* data, size_t size, const PickleName& where, StorageSource* storages);

}  // namespace zerocopy::pickle
