#include "restricted_unpickler.h"

#include <map>
#include <string_view>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "zerocopy/status.h"

namespace zerocopy::pickle {

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "?";
}

namespace {

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

// torch.<Name>Storage -> dtype; these are the names torch.save writes.
const std::map<std::string, DType, std::less<>>& StorageTypes() {
  static const auto* types = new std::map<std::string, DType, std::less<>>{
      {"DoubleStorage", v1::F64},
      {"FloatStorage", v1::F32},
      {"HalfStorage", v1::F16},
      {"BFloat16Storage", v1::BF16},
      {"LongStorage", v1::I64},
      {"IntStorage", v1::I32},
      {"ShortStorage", v1::I16},
      {"CharStorage", v1::I8},
      {"ByteStorage", v1::U8},
      {"BoolStorage", v1::BOOL},
      {"ComplexFloatStorage", v1::C64},
      {"ComplexDoubleStorage", v1::C128},
      {"UInt16Storage", v1::U16},
      {"UInt32Storage", v1::U32},
      {"UInt64Storage", v1::U64},
      {"Float8_e4m3fnStorage", v1::F8_E4M3},
      {"Float8_e5m2Storage", v1::F8_E5M2},
  };
  return *types;
}

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, const PickleName& where, StorageSource* storages)
      : begin_(data), p_(data), end_(data + size), where_(where), storages_(storages) {}

  absl::StatusOr<Obj*> Run() {
    for (;;) {
      if (p_ >= end_) return Invalid(absl::StrCat(where_.name, " ", Truncated().message()));
      if (arena_.size() + stack_.size() + marks_.size() + memo_.size() > kMaxObjects) {
        return Invalid(absl::StrCat(where_.name, " builds more than ", kMaxObjects, " objects"));
      }
      const uint64_t op_at = where_.first_byte + static_cast<uint64_t>(p_ - begin_);
      uint8_t op = *p_++;
      absl::Status st;
      if (op == '.') {
        absl::StatusOr<Obj*> result = Pop();
        if (result.ok()) return *result;
        st = result.status();
      } else {
        st = Step(op);
      }
      if (!st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where_.name, " at byte ", op_at, " (opcode 0x", absl::Hex(op), "): ", st.message()));
      }
    }
  }

  size_t consumed() const { return static_cast<size_t>(p_ - begin_); }
  std::vector<std::unique_ptr<Obj>> TakeArena() { return std::move(arena_); }

 private:
  Obj* New(Kind k) {
    arena_.push_back(std::make_unique<Obj>());
    arena_.back()->kind = k;
    return arena_.back().get();
  }

  absl::Status Truncated() const {
    const uint64_t end = where_.first_byte + static_cast<uint64_t>(end_ - begin_);
    if (where_.budget_ends) {
      return Invalid(
          absl::StrCat("runs past byte ", end, ", over the budget of ", kMaxPickleBytes, " bytes of pickle"));
    }
    return Invalid(absl::StrCat("ends at byte ", end, " before its STOP (truncated?)"));
  }
  absl::StatusOr<const uint8_t*> Take(uint64_t n) {
    if (static_cast<uint64_t>(end_ - p_) < n) return Truncated();
    const uint8_t* at = p_;
    p_ += n;
    return at;
  }
  absl::StatusOr<uint64_t> TakeLe(int bytes) {
    ZC_ASSIGN_OR_RETURN(const uint8_t* at, Take(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = v << 8 | at[i];
    return v;
  }
  absl::StatusOr<std::string> TakeLine() {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(p_, '\n', end_ - p_));
    if (!nl) return Truncated();
    std::string line(reinterpret_cast<const char*>(p_), nl - p_);
    p_ = nl + 1;
    return line;
  }

  absl::StatusOr<Obj*> Pop() {
    if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size())) return Invalid("stack underflow");
    Obj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  absl::StatusOr<std::vector<Obj*>> PopMark() {
    if (marks_.empty()) return Invalid("no MARK on the stack");
    size_t at = marks_.back();
    marks_.pop_back();
    std::vector<Obj*> out(stack_.begin() + static_cast<ptrdiff_t>(at), stack_.end());
    stack_.resize(at);
    return out;
  }
  absl::StatusOr<Obj*> Top(Kind want, const char* op) {
    if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size())) {
      return Invalid(absl::StrCat(op, " with no operand above the MARK"));
    }
    if (stack_.back()->kind != want) {
      return Invalid(absl::StrCat(op, " on a ", KindName(stack_.back()->kind), ", expected a ", KindName(want)));
    }
    return stack_.back();
  }
  void Push(Obj* o) { stack_.push_back(o); }
  Obj* Int(int64_t v) {
    Obj* o = New(Kind::kInt);
    o->i = v;
    return o;
  }
  Obj* Str(Kind k, const uint8_t* at, uint64_t n) {
    Obj* o = New(k);
    o->s.assign(reinterpret_cast<const char*>(at), n);
    return o;
  }
  absl::Status PushString(Kind k, int len_bytes) {
    ZC_ASSIGN_OR_RETURN(uint64_t n, TakeLe(len_bytes));
    ZC_ASSIGN_OR_RETURN(const uint8_t* at, Take(n));
    Push(Str(k, at, n));
    return absl::OkStatus();
  }
  absl::Status Memo(uint64_t index) {
    if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size())) {
      return Invalid("memo store with no operand above the MARK");
    }
    memo_[index] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Invalid(absl::StrCat("memo ", index, " was never stored"));
    Push(it->second);
    return absl::OkStatus();
  }
  absl::Status SetItems(Obj* dict, const std::vector<Obj*>& kv) {
    if (kv.size() % 2) return Invalid("SETITEMS with an odd number of values");
    for (size_t i = 0; i < kv.size(); i += 2) dict->dict.emplace_back(kv[i], kv[i + 1]);
    return absl::OkStatus();
  }

  absl::Status Global(const std::string& module, const std::string& name) {
    std::string full = absl::StrCat(module, ".", name);
    static const char* const kAllowed[] = {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch._utils._rebuild_tensor_v3",
        "torch.storage.UntypedStorage",
    };
    static const char* const kNotDense[] = {"_rebuild_qtensor",
                                            "_rebuild_sparse_tensor",
                                            "_rebuild_sparse_csr",
                                            "_rebuild_nested_tensor",
                                            "_rebuild_meta_tensor_no_storage",
                                            "_rebuild_wrapper_subclass",
                                            "_rebuild_xla_tensor",
                                            "_rebuild_device_tensor_from_numpy",
                                            "_rebuild_device_tensor_from_cpu_tensor"};
    if (module == "torch._utils") {
      for (const char* n : kNotDense) {
        if (name == n) {
          return Invalid(absl::StrCat("the file holds a tensor rebuilt by ", full,
                                      " (quantized, sparse, nested or device-only), and zerocopy holds dense "
                                      "tensors only: convert it (e.g. .dequantize(), .to_dense()) before saving"));
        }
      }
    }
    bool ok = module == "torch" && (StorageTypes().count(name) || DTypeFromTorch(name).has_value());
    for (const char* a : kAllowed) ok = ok || full == a;
    if (!ok) {
      if (module == "torch" && !name.empty() && std::islower(static_cast<unsigned char>(name[0]))) {
        return Invalid(absl::StrCat("the file holds a tensor of dtype ", full, ", which zerocopy cannot hold"));
      }
      if (module == "torch" && absl::EndsWith(name, "Storage")) {
        return Invalid(
            absl::StrCat("torch.", name, " tensors (quantized or unknown dtype) cannot be held by zerocopy"));
      }
      return Invalid(absl::StrCat("the pickle refers to ", full,
                                  ", which a state dict does not need and zerocopy will not load (save a dict of "
                                  "tensors, e.g. model.state_dict())"));
    }
    Obj* g = New(Kind::kGlobal);
    g->s = std::move(full);
    Push(g);
    return absl::OkStatus();
  }

  // A persistent id: ('storage', type, key, location, numel) in a zip
  // archive, the legacy format adding a view: None, or (view key, offset,
  // numel) of a part of the storage.
  absl::Status PersistentLoad() {
    ZC_ASSIGN_OR_RETURN(Obj * pid, Pop());
    if (!storages_) return Invalid("a persistent id in a pickle that may hold none");
    const bool legacy = storages_->legacy();
    const size_t arity = legacy ? 6 : 5;
    if (pid->kind != Kind::kTuple || pid->items.size() != arity || pid->items[0]->kind != Kind::kString ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != Kind::kGlobal || pid->items[2]->kind != Kind::kString ||
        pid->items[4]->kind != Kind::kInt || pid->items[4]->i < 0) {
      return Invalid(legacy ? "persistent id is not ('storage', type, key, location, numel, view)"
                            : "persistent id is not ('storage', type, key, location, numel)");
    }
    const std::string& type = pid->items[1]->s;
    auto dt = absl::StartsWith(type, "torch.") ? StorageTypes().find(type.substr(6)) : StorageTypes().end();
    const bool untyped = type == "torch.storage.UntypedStorage";
    if (dt == StorageTypes().end() && !untyped) {
      return Invalid(absl::StrCat("persistent id names ", type, ", not a storage type"));
    }
    const DType storage_dtype = untyped ? v1::U8 : dt->second;
    const std::string& key = pid->items[2]->s;
    const uint64_t numel = static_cast<uint64_t>(pid->items[4]->i);
    Obj* s;
    auto known = roots_.find(key);
    if (known != roots_.end()) {
      s = known->second;
      if (s->dtype != storage_dtype) return Invalid(absl::StrCat("storage ", key, " is used with two types"));
      if (legacy && s->bytes / DTypeSize(s->dtype) != numel) {
        return Invalid(absl::StrCat("storage ", key, " is declared with ", s->bytes / DTypeSize(s->dtype), " and ",
                                    numel, " elements"));
      }
    } else {
      if (views_.count(key)) return Invalid(absl::StrCat("storage ", key, " is both a storage and a view"));
      s = New(Kind::kStorage);
      s->dtype = storage_dtype;
      s->s = key;
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(s->dtype)), &s->bytes)) {
        return Invalid(absl::StrCat("storage ", key, " declares ", numel, " elements of ", DTypeName(s->dtype),
                                    ", more bytes than can be"));
      }
      ZC_RETURN_IF_ERROR(storages_->Find(s));
      roots_.emplace(key, s);
    }
    if (legacy && pid->items[5]->kind != Kind::kNone) {
      ZC_ASSIGN_OR_RETURN(s, View(s, pid->items[5]));
    }
    Push(s);
    return absl::OkStatus();
  }

  // A view of `root`: (view key, offset, numel), in root's elements (torch
  // < 1.0 wrote them for storage slices); one view key is one view.
  absl::StatusOr<Obj*> View(Obj* root, const Obj* view) {
    if (view->kind != Kind::kTuple || view->items.size() != 3 || view->items[0]->kind != Kind::kString ||
        view->items[1]->kind != Kind::kInt || view->items[1]->i < 0 || view->items[2]->kind != Kind::kInt ||
        view->items[2]->i < 0) {
      return Invalid("a storage view is not (key, offset, numel)");
    }
    const std::string& key = view->items[0]->s;
    const uint64_t itemsize = DTypeSize(root->dtype);
    const uint64_t offset = static_cast<uint64_t>(view->items[1]->i), numel = static_cast<uint64_t>(view->items[2]->i);
    uint64_t end;
    if (__builtin_add_overflow(offset, numel, &end) || end > root->bytes / itemsize) {
      return Invalid(absl::StrCat("storage view ", key, " covers elements ", offset, " to ", offset, "+", numel,
                                  " of storage ", root->s, ", which has ", root->bytes / itemsize));
    }
    if (roots_.count(key)) return Invalid(absl::StrCat("storage ", key, " is both a storage and a view"));
    auto known = views_.find(key);
    if (known != views_.end()) {
      const Obj* v = known->second;
      if (v->storage != root || static_cast<uint64_t>(v->offset) != offset * itemsize || v->bytes != numel * itemsize) {
        return Invalid(absl::StrCat("storage view ", key, " is declared twice, differently"));
      }
      return known->second;
    }
    Obj* v = New(Kind::kStorage);
    v->dtype = root->dtype;
    v->s = key;
    v->storage = root;
    v->offset = static_cast<int64_t>(offset * itemsize);
    v->bytes = numel * itemsize;
    views_.emplace(key, v);
    return v;
  }

  static absl::Status Ints(const Obj* o, const char* what, std::vector<int64_t>* out) {
    if (o->kind != Kind::kTuple && o->kind != Kind::kList) return Invalid(absl::StrCat(what, " is not a tuple"));
    for (const Obj* d : o->items) {
      if (d->kind != Kind::kInt || d->i < 0)
        return Invalid(absl::StrCat(what, " holds a non-integer or negative value"));
      out->push_back(d->i);
    }
    return absl::OkStatus();
  }

  // `dtype`: the tensor's, or nullopt for the storage's (typed storages).
  absl::StatusOr<Obj*> RebuildTensor(const std::vector<Obj*>& args, std::optional<DType> dtype) {
    if (args.size() < 4) return Invalid("_rebuild_tensor needs (storage, offset, size, stride)");
    if (args[0]->kind != Kind::kStorage) return Invalid("_rebuild_tensor's first argument is not a storage");
    if (args[1]->kind != Kind::kInt || args[1]->i < 0) return Invalid("_rebuild_tensor's offset is not an integer");
    Obj* t = New(Kind::kTensor);
    t->storage = args[0];
    t->dtype = dtype ? *dtype : args[0]->dtype;
    t->offset = args[1]->i;
    ZC_RETURN_IF_ERROR(Ints(args[2], "tensor size", &t->shape));
    ZC_RETURN_IF_ERROR(Ints(args[3], "tensor stride", &t->strides));
    if (t->shape.size() != t->strides.size()) return Invalid("tensor size and stride differ in length");
    // Every element addressed lies inside the storage.
    uint64_t last = static_cast<uint64_t>(t->offset);
    bool empty = false;
    for (size_t d = 0; d < t->shape.size(); ++d) {
      if (t->shape[d] == 0) empty = true;
      uint64_t step;
      if (__builtin_mul_overflow(static_cast<uint64_t>(t->shape[d] ? t->shape[d] - 1 : 0),
                                 static_cast<uint64_t>(t->strides[d]), &step) ||
          __builtin_add_overflow(last, step, &last)) {
        return Invalid("tensor extent overflows");
      }
    }
    const uint64_t itemsize = DTypeSize(t->dtype);
    if (static_cast<uint64_t>(t->offset) > t->storage->bytes / itemsize) {
      return Invalid(absl::StrCat("a tensor starts at element ", t->offset, ", past its storage of ", t->storage->bytes,
                                  " bytes"));
    }
    uint64_t end_byte;
    if (!empty && (__builtin_add_overflow(last, uint64_t{1}, &end_byte) ||
                   __builtin_mul_overflow(end_byte, itemsize, &end_byte) || end_byte > t->storage->bytes)) {
      return Invalid(absl::StrCat("a tensor reaches element ", last, " of ", DTypeName(t->dtype), " in a storage of ",
                                  t->storage->bytes, " bytes"));
    }
    return t;
  }

  absl::StatusOr<Obj*> Call(Obj* fn, const std::vector<Obj*>& args) {
    if (fn->kind != Kind::kGlobal) return Invalid(absl::StrCat("REDUCE on a ", KindName(fn->kind)));
    const std::string& f = fn->s;
    if (f == "collections.OrderedDict") {
      Obj* d = New(Kind::kDict);
      if (!args.empty()) {
        if (args.size() != 1 || (args[0]->kind != Kind::kList && args[0]->kind != Kind::kTuple)) {
          return Invalid("OrderedDict() takes one list of pairs");
        }
        for (Obj* kv : args[0]->items) {
          if ((kv->kind != Kind::kList && kv->kind != Kind::kTuple) || kv->items.size() != 2) {
            return Invalid("OrderedDict() item is not a pair");
          }
          d->dict.emplace_back(kv->items[0], kv->items[1]);
        }
      }
      return d;
    }
    if (f == "torch._utils._rebuild_tensor_v2" || f == "torch._utils._rebuild_tensor") {
      return RebuildTensor(args, std::nullopt);
    }
    if (f == "torch._utils._rebuild_tensor_v3") {
      // (storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
      if (args.size() < 7 || args[6]->kind != Kind::kGlobal) return Invalid("_rebuild_tensor_v3 needs a dtype");
      const std::optional<DType> dt =
          absl::StartsWith(args[6]->s, "torch.") ? DTypeFromTorch(args[6]->s) : std::nullopt;
      if (!dt) return Invalid(absl::StrCat("a tensor has dtype ", args[6]->s, ", which zerocopy cannot hold"));
      return RebuildTensor(args, *dt);
    }
    if (f == "torch._utils._rebuild_parameter" || f == "torch._utils._rebuild_parameter_with_state") {
      if (args.empty() || args[0]->kind != Kind::kTensor) return Invalid(absl::StrCat(f, " takes a tensor"));
      return args[0];
    }
    if (f == "torch._tensor._rebuild_from_type_v2") {
      if (args.size() < 3 || args[2]->kind != Kind::kTuple)
        return Invalid("_rebuild_from_type_v2 needs (func, type, args)");
      if (args[1]->kind != Kind::kGlobal ||
          (args[1]->s != "torch.Tensor" && args[1]->s != "torch.nn.parameter.Parameter")) {
        return Invalid("_rebuild_from_type_v2 of a tensor subclass zerocopy does not know");
      }
      if (++depth_ > kMaxDepth) return Invalid("nested too deeply");
      auto r = Call(args[0], args[2]->items);
      --depth_;
      return r;
    }
    return Invalid(absl::StrCat(f, " cannot be called"));
  }

  absl::Status Step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        ZC_ASSIGN_OR_RETURN(uint64_t v, TakeLe(1));
        if (v > 5) return Invalid(absl::StrCat("pickle protocol ", v, " is newer than 5"));
        return absl::OkStatus();
      }
      case 0x95: return Take(8).status();  // FRAME
      case '(': marks_.push_back(stack_.size()); return absl::OkStatus();
      case '0': return Pop().status();
      case '1': return PopMark().status();
      case '2': {
        ZC_ASSIGN_OR_RETURN(Obj * o, Pop());
        Push(o);
        Push(o);
        return absl::OkStatus();
      }
      case 'N': Push(New(Kind::kNone)); return absl::OkStatus();
      case 0x88:
      case 0x89: {
        Obj* o = New(Kind::kBool);
        o->b = op == 0x88;
        Push(o);
        return absl::OkStatus();
      }
      case 'J': {
        ZC_ASSIGN_OR_RETURN(uint64_t v, TakeLe(4));
        Push(Int(static_cast<int32_t>(static_cast<uint32_t>(v))));
        return absl::OkStatus();
      }
      case 'K': {
        ZC_ASSIGN_OR_RETURN(uint64_t v, TakeLe(1));
        Push(Int(static_cast<int64_t>(v)));
        return absl::OkStatus();
      }
      case 'M': {
        ZC_ASSIGN_OR_RETURN(uint64_t v, TakeLe(2));
        Push(Int(static_cast<int64_t>(v)));
        return absl::OkStatus();
      }
      case 0x8a:    // LONG1
      case 0x8b: {  // LONG4
        ZC_ASSIGN_OR_RETURN(uint64_t n, TakeLe(op == 0x8a ? 1 : 4));
        if (n > 8) return Invalid("integer wider than 64 bits");
        ZC_ASSIGN_OR_RETURN(const uint8_t* at, Take(n));
        uint64_t v = 0;
        for (uint64_t i = n; i-- > 0;) v = v << 8 | at[i];
        if (n > 0 && n < 8 && (at[n - 1] & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        Push(Int(static_cast<int64_t>(v)));
        return absl::OkStatus();
      }
      case 'I':
      case 'L': {
        ZC_ASSIGN_OR_RETURN(std::string line, TakeLine());
        if (op == 'I' && (line == "00" || line == "01")) {
          Obj* o = New(Kind::kBool);
          o->b = line == "01";
          Push(o);
          return absl::OkStatus();
        }
        if (op == 'L' && absl::EndsWith(line, "L")) line.pop_back();
        int64_t v;
        if (!absl::SimpleAtoi(line, &v)) return Invalid("malformed integer");
        Push(Int(v));
        return absl::OkStatus();
      }
      case 'G': {
        ZC_ASSIGN_OR_RETURN(const uint8_t* at, Take(8));
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = bits << 8 | at[i];
        Obj* o = New(Kind::kFloat);
        std::memcpy(&o->f, &bits, 8);
        Push(o);
        return absl::OkStatus();
      }
      case 'F': {
        ZC_ASSIGN_OR_RETURN(std::string line, TakeLine());
        Obj* o = New(Kind::kFloat);
        if (!absl::SimpleAtod(line, &o->f)) return Invalid("malformed float");
        Push(o);
        return absl::OkStatus();
      }
      case 'X': return PushString(Kind::kString, 4);
      case 0x8c: return PushString(Kind::kString, 1);
      case 0x8d: return PushString(Kind::kString, 8);
      case 'T': return PushString(Kind::kString, 4);
      case 'U': return PushString(Kind::kString, 1);
      case 'B': return PushString(Kind::kBytes, 4);
      case 'C': return PushString(Kind::kBytes, 1);
      case 0x8e: return PushString(Kind::kBytes, 8);
      case '}': Push(New(Kind::kDict)); return absl::OkStatus();
      case ']': Push(New(Kind::kList)); return absl::OkStatus();
      case ')': Push(New(Kind::kTuple)); return absl::OkStatus();
      case 0x85:
      case 0x86:
      case 0x87: {
        size_t n = op - 0x84;
        if (stack_.size() < n + (marks_.empty() ? 0 : marks_.back())) return Invalid("stack underflow");
        Obj* t = New(Kind::kTuple);
        t->items.assign(stack_.end() - static_cast<ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        Push(t);
        return absl::OkStatus();
      }
      case 't':
      case 'l': {
        ZC_ASSIGN_OR_RETURN(auto items, PopMark());
        Obj* o = New(op == 't' ? Kind::kTuple : Kind::kList);
        o->items = std::move(items);
        Push(o);
        return absl::OkStatus();
      }
      case 'd': {
        ZC_ASSIGN_OR_RETURN(auto items, PopMark());
        Obj* d = New(Kind::kDict);
        ZC_RETURN_IF_ERROR(SetItems(d, items));
        Push(d);
        return absl::OkStatus();
      }
      case 's': {
        ZC_ASSIGN_OR_RETURN(Obj * value, Pop());
        ZC_ASSIGN_OR_RETURN(Obj * key, Pop());
        ZC_ASSIGN_OR_RETURN(Obj * d, Top(Kind::kDict, "SETITEM"));
        d->dict.emplace_back(key, value);
        return absl::OkStatus();
      }
      case 'u': {
        ZC_ASSIGN_OR_RETURN(auto items, PopMark());
        ZC_ASSIGN_OR_RETURN(Obj * d, Top(Kind::kDict, "SETITEMS"));
        return SetItems(d, items);
      }
      case 'a': {
        ZC_ASSIGN_OR_RETURN(Obj * value, Pop());
        ZC_ASSIGN_OR_RETURN(Obj * l, Top(Kind::kList, "APPEND"));
        l->items.push_back(value);
        return absl::OkStatus();
      }
      case 'e': {
        ZC_ASSIGN_OR_RETURN(auto items, PopMark());
        ZC_ASSIGN_OR_RETURN(Obj * l, Top(Kind::kList, "APPENDS"));
        l->items.insert(l->items.end(), items.begin(), items.end());
        return absl::OkStatus();
      }
      case 'q': {
        ZC_ASSIGN_OR_RETURN(uint64_t i, TakeLe(1));
        return Memo(i);
      }
      case 'r': {
        ZC_ASSIGN_OR_RETURN(uint64_t i, TakeLe(4));
        return Memo(i);
      }
      case 0x94: return Memo(memo_.size());
      case 'p':
      case 'g': {
        ZC_ASSIGN_OR_RETURN(std::string line, TakeLine());
        uint64_t i;
        if (!absl::SimpleAtoi(line, &i)) return Invalid("malformed memo index");
        return op == 'p' ? Memo(i) : Recall(i);
      }
      case 'h': {
        ZC_ASSIGN_OR_RETURN(uint64_t i, TakeLe(1));
        return Recall(i);
      }
      case 'j': {
        ZC_ASSIGN_OR_RETURN(uint64_t i, TakeLe(4));
        return Recall(i);
      }
      case 'c': {
        ZC_ASSIGN_OR_RETURN(std::string module, TakeLine());
        ZC_ASSIGN_OR_RETURN(std::string name, TakeLine());
        return Global(module, name);
      }
      case 0x93: {
        ZC_ASSIGN_OR_RETURN(Obj * name, Pop());
        ZC_ASSIGN_OR_RETURN(Obj * module, Pop());
        if (name->kind != Kind::kString || module->kind != Kind::kString) return Invalid("STACK_GLOBAL of non-strings");
        return Global(module->s, name->s);
      }
      case 'R': {
        ZC_ASSIGN_OR_RETURN(Obj * args, Pop());
        ZC_ASSIGN_OR_RETURN(Obj * fn, Pop());
        if (args->kind != Kind::kTuple) return Invalid("REDUCE arguments are not a tuple");
        ZC_ASSIGN_OR_RETURN(Obj * result, Call(fn, args->items));
        Push(result);
        return absl::OkStatus();
      }
      case 'b': {  // BUILD: a dict's __dict__ (state_dict's _metadata) is dropped
        ZC_ASSIGN_OR_RETURN(Obj * state, Pop());
        (void)state;
        if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size()) ||
            (stack_.back()->kind != Kind::kDict && stack_.back()->kind != Kind::kTensor)) {
          return Invalid("BUILD on an object that is not a dict or tensor");
        }
        return absl::OkStatus();
      }
      case 'Q': return PersistentLoad();
      default: return Invalid("opcode not allowed in a state dict (objects, sets, extensions, text persistent ids)");
    }
  }

  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const PickleName& where_;
  StorageSource* storages_;
  std::vector<std::unique_ptr<Obj>> arena_;  // moved out by Unpickle
  std::vector<Obj*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Obj*> memo_;
  std::map<std::string, Obj*> roots_, views_;  // storages by key
  int depth_ = 0;
};

}  // namespace

absl::StatusOr<Unpickled> Unpickle(const uint8_t* data, size_t size, const PickleName& where, StorageSource* storages) {
  Unpickler unpickler(data, size, where, storages);
  Unpickled result;
  ZC_ASSIGN_OR_RETURN(result.root, unpickler.Run());
  result.end = unpickler.consumed();
  result.arena = unpickler.TakeArena();
  return result;
}

}  // namespace zerocopy::pickle
