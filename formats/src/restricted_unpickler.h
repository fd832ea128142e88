// The restricted unpickler of torch.save archives: runs data.pkl's opcodes
// with a stack machine that builds only plain values (None, bools,
// numbers, strings, bytes, lists, tuples, dicts), storages
// (persistent ids naming the archive's data/ records) and tensors
// (torch._utils._rebuild_tensor_v2/v3 over them). It never imports or
// calls anything: any other global, any object construction, set or
// extension opcode is refused with the byte offset and opcode. Budgets
// bound the objects it creates and how deeply they nest.
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
#include "zerocopy/zip_directory.h"

namespace zerocopy::pickle {

// Budgets against hostile pickles (real state dicts stay far below): the
// objects the unpickler may create (each ~200 bytes), and how deeply
// values may nest (here and when they are flattened).
constexpr size_t kMaxObjects = 2u << 20;
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
  std::string s;                             // str, bytes, global "module.name"
  std::vector<Obj*> items;                   // list, tuple
  std::vector<std::pair<Obj*, Obj*>> dict;   // dict, in insertion order
  // storage: `bytes` bytes of `entry`; tensor: elements of `dtype`
  DType dtype = v1::DTYPE_UNSPECIFIED;
  const ZipEntry* entry = nullptr;
  uint64_t bytes = 0;
  // tensor
  Obj* storage = nullptr;
  int64_t offset = 0;
  std::vector<int64_t> shape, strides;
};

// Every value the pickle built (`root` among them), owned here: they point
// at each other by raw pointer.
struct Unpickled {
  std::vector<std::unique_ptr<Obj>> arena;
  Obj* root = nullptr;
};

// Runs the pickle `data`/`size`, whose persistent ids name records under
// `record_prefix` ("<archive>/") among `entries`. INVALID_ARGUMENT, with
// the byte offset and opcode, for anything it does not allow.
absl::StatusOr<Unpickled> Unpickle(const uint8_t* data, size_t size, std::string record_prefix,
                                   const std::vector<ZipEntry>& entries);

}  // namespace zerocopy::pickle
