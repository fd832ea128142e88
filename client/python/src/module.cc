// _zerocopy: the C++ client for Python. It only binds: a Client (publish,
// preload, get, map, list, delete, tag, pin, stats) and a Mapping whose
// storages and tensors leave as DLPack capsules (and its files as bytes). Weights never pass through Python
// objects; the GIL is released for every daemon call and every copy
// (Unlocked). Protos reach Python through one generic conversion
// (ToPython); errors raise the class ray_zerocopy.errors.from_status
// chooses for the status code.
#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include "absl/strings/str_cat.h"
#include "zerocopy/checkpoint.h"
#include "zerocopy/client.h"
#include "zerocopy/device_model.h"
#include "zerocopy/digest.h"
#include "zerocopy/dtype.h"
#include "zerocopy/mapped_model.h"
#include "zerocopy/manifest.h"
#include "zerocopy/model_source.h"
#include "zerocopy/status.h"

namespace py = pybind11;

namespace zerocopy::python {
namespace {

// The exception for a status: ray_zerocopy.errors owns the table of
// codes and classes.
[[noreturn]] void Raise(const absl::Status& status) {
  py::object error = py::module_::import("ray_zerocopy.errors")
                         .attr("from_status")(absl::StatusCodeToString(status.code()), std::string(status.message()));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
  throw py::error_already_set();
}

template <typename T>
T Check(absl::StatusOr<T> value) {
  if (!value.ok()) Raise(value.status());
  return *std::move(value);
}
void Check(const absl::Status& status) {
  if (!status.ok()) Raise(status);
}

// Runs `call` (a daemon call, a copy) without the GIL and raises its
// error, if any; returns its value.
template <typename Call>
auto Unlocked(Call&& call) {
  using Result = decltype(call());
  if constexpr (std::is_void_v<Result>) {
    py::gil_scoped_release unlocked;
    call();
  } else {
    std::optional<Result> result;
    {
      py::gil_scoped_release unlocked;
      result.emplace(call());
    }
    if constexpr (std::is_same_v<Result, absl::Status>) {
      Check(*result);
    } else {
      return Check(std::move(*result));
    }
  }
}

py::object ToPython(const google::protobuf::Message& message);

// One value of a field (`index` into a repeated one, -1 for a singular one).
py::object FieldToPython(const google::protobuf::Message& m, const google::protobuf::FieldDescriptor* f, int index) {
  using FD = google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = m.GetReflection();
  const bool rep = index >= 0;
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT32: return py::int_(rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f));
    case FD::CPPTYPE_INT64: return py::int_(rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f));
    case FD::CPPTYPE_UINT32: return py::int_(rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f));
    case FD::CPPTYPE_UINT64: return py::int_(rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f));
    case FD::CPPTYPE_DOUBLE: return py::float_(rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f));
    case FD::CPPTYPE_FLOAT: return py::float_(rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f));
    case FD::CPPTYPE_BOOL: return py::bool_(rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f));
    case FD::CPPTYPE_ENUM: return py::str((rep ? r->GetRepeatedEnum(m, f, index) : r->GetEnum(m, f))->name());
    case FD::CPPTYPE_STRING: {
      std::string v = rep ? r->GetRepeatedString(m, f, index) : r->GetString(m, f);
      if (f->type() == FD::TYPE_BYTES) return py::bytes(v);
      return py::str(v);
    }
    case FD::CPPTYPE_MESSAGE: return ToPython(rep ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f));
  }
  return py::none();
}

// Any message as a dict keyed by field name: lists for repeated fields,
// dicts for maps and messages, enum values by name, None for an unset
// optional field. The one way protos reach Python, so a field added to
// the proto reaches it too.
py::object ToPython(const google::protobuf::Message& message) {
  py::dict d;
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  const google::protobuf::Reflection* r = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = descriptor->field(i);
    py::str key(f->name());
    if (f->is_map()) {
      py::dict map;
      for (int k = 0; k < r->FieldSize(message, f); ++k) {
        const google::protobuf::Message& entry = r->GetRepeatedMessage(message, f, k);
        const auto* entry_descriptor = entry.GetDescriptor();
        map[FieldToPython(entry, entry_descriptor->map_key(), -1)] =
            FieldToPython(entry, entry_descriptor->map_value(), -1);
      }
      d[key] = map;
    } else if (f->is_repeated()) {
      py::list list;
      for (int k = 0; k < r->FieldSize(message, f); ++k) list.append(FieldToPython(message, f, k));
      d[key] = list;
    } else if (f->has_presence() && f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE &&
               !r->HasField(message, f)) {
      d[key] = py::none();
    } else {
      d[key] = FieldToPython(message, f, -1);
    }
  }
  return d;
}

// A manifest's tensors: the list ToPython(manifest)["tensors"] holds,
// without converting (and copying) the rest, its metadata above all.
py::list TensorsToPython(const v1::Manifest& manifest) {
  py::list tensors;
  for (const auto& t : manifest.tensors()) tensors.append(ToPython(t));
  return tensors;
}

py::capsule Capsule(DLManagedTensor* tensor) {
  // The DLPack protocol: a capsule named "dltensor" whose destructor frees
  // the tensor unless a consumer took it (and renamed it "used_dltensor").
  return py::capsule(tensor, "dltensor", [](PyObject* capsule) {
    if (PyCapsule_IsValid(capsule, "dltensor")) {
      auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
      if (t && t->deleter) t->deleter(t);
    } else {
      PyErr_Clear();
    }
  });
}

// Whether DLPack hands torch a tensor of this dtype as the same dtype on
// every torch we support (the others are carved from their storage).
bool SameDTypeThroughDLPack(v1::DType dtype) {
  switch (dtype) {
    case v1::F64:
    case v1::F32:
    case v1::F16:
    case v1::BF16:
    case v1::I64:
    case v1::I32:
    case v1::I16:
    case v1::I8:
    case v1::U8:
    case v1::BOOL: return true;
    default: return false;
  }
}

// A model mapped into this process: MappedModel (host) or DeviceModel (a
// GPU's shared copy).
template <typename Model>
class MappingOf {
 public:
  explicit MappingOf(std::shared_ptr<Model> model) : model_(std::move(model)) {}

  py::object info() const { return ToPython(model_->info()); }
  std::string digest() const { return model_->digest(); }
  uint64_t size() const { return model_->size(); }
  uintptr_t address() const { return reinterpret_cast<uintptr_t>(model_->data()); }
  const std::shared_ptr<Model>& model() const { return model_; }
  py::bytes metadata() const { return py::bytes(model_->manifest().metadata()); }
  py::bytes manifest_bytes() const { return py::bytes(model_->manifest().SerializeAsString()); }
  std::string format() const { return model_->manifest().format(); }
  std::vector<uint64_t> storage_sizes() const {
    std::vector<uint64_t> sizes;
    for (const auto& s : model_->manifest().storages()) sizes.push_back(s.size());
    return sizes;
  }
  py::list tensors() const { return TensorsToPython(model_->manifest()); }
  // Every tensor in one call, for load_state_dict: tuples (name, storage,
  // byte_offset, dtype, shape, strides, whole), strides () when
  // contiguous. `whole` is the tensor itself as a DLPack capsule (shape and
  // strides then None: the capsule has them) when it
  // alone covers its storage exactly (the common case: a storage per
  // parameter), so Python makes it with one import; None when it shares
  // its storage (tied weights, views) or has a dtype outside DLPack's
  // classic set, and Python carves it from the storage.
  py::list tensor_plan() {
    const v1::Manifest& manifest = model_->manifest();
    const std::vector<bool> whole = model_->SoleCoveringTensors();
    std::map<int, py::str> dtype_names;  // a handful of dtypes, thousands of tensors
    py::list plan(manifest.tensors_size());
    for (int i = 0; i < manifest.tensors_size(); ++i) {
      const v1::Tensor& t = manifest.tensors(i);
      auto [name, fresh] = dtype_names.try_emplace(t.dtype());
      if (fresh) name->second = py::str(v1::DType_Name(t.dtype()));
      if (whole[static_cast<size_t>(i)] && SameDTypeThroughDLPack(t.dtype())) {
        // The capsule carries shape and strides: Python needs neither.
        plan[i] = py::make_tuple(t.name(), t.storage(), t.byte_offset(), name->second, py::none(), py::none(),
                                 Capsule(Check(model_->ToDLPack(static_cast<size_t>(i)))));
        continue;
      }
      py::tuple shape(t.shape_size());
      for (int k = 0; k < t.shape_size(); ++k) shape[k] = py::int_(t.shape(k));
      py::tuple strides(t.strides_size());
      for (int k = 0; k < t.strides_size(); ++k) strides[k] = py::int_(t.strides(k));
      plan[i] = py::make_tuple(t.name(), t.storage(), t.byte_offset(), name->second, std::move(shape),
                               std::move(strides), py::none());
    }
    return plan;
  }
  py::capsule storage(size_t index) { return Capsule(Check(model_->StorageToDLPack(index))); }
  py::capsule tensor(size_t index) {
    if (index >= model_->tensor_count()) Raise(absl::OutOfRangeError("tensor index out of range"));
    return Capsule(Check(model_->ToDLPack(index)));
  }

 private:
  std::shared_ptr<Model> model_;
};
using Mapping = MappingOf<MappedModel>;
using DeviceMapping = MappingOf<DeviceModel>;

template <typename M, typename... Extra>
py::class_<M, std::shared_ptr<M>> BindMapping(py::module_& m, const char* name, const Extra&... extra) {
  return py::class_<M, std::shared_ptr<M>>(m, name, extra...)
      .def_property_readonly("info", &M::info)
      .def_property_readonly("digest", &M::digest)
      .def_property_readonly("size", &M::size)
      .def_property_readonly("address", &M::address)
      .def_property_readonly("metadata", &M::metadata)
      .def_property_readonly("format", &M::format)
      .def_property_readonly("manifest_bytes", &M::manifest_bytes, "the manifest, serialized (zerocopy.v1.Manifest)")
      .def("storage_sizes", &M::storage_sizes)
      .def("tensors", &M::tensors)
      .def("tensor_plan", &M::tensor_plan, "every tensor as (name, storage, byte_offset, dtype, shape, strides, whole)")
      .def("storage", &M::storage, py::arg("index"), "storage `index` as a uint8 DLPack capsule")
      .def("tensor", &M::tensor, py::arg("index"), "tensor `index` as a DLPack capsule");
}

// A C-contiguous Python buffer (bytes, a numpy array), held for the
// duration of a call.
class BufferView {
 public:
  BufferView(const py::object& data, const char* what) {
    if (PyObject_GetBuffer(data.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();
      Raise(absl::InvalidArgumentError(
          absl::StrCat(what, " needs a C-contiguous buffer (bytes, a contiguous numpy array)")));
    }
  }
  ~BufferView() { PyBuffer_Release(&view_); }
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;
  const void* data() const { return view_.buf; }
  uint64_t size() const { return static_cast<uint64_t>(view_.len); }

 private:
  Py_buffer view_;
};

// A model arriving from another node (see incoming_model.h): write the
// segment's bytes from any buffer, then commit under the expected digest.
class PyIncoming {
 public:
  explicit PyIncoming(std::unique_ptr<IncomingModel> model) : model_(std::move(model)) {}
  uint64_t size() const { return model_->size(); }
  std::string digest() const { return model_->digest(); }
  std::string path() const { return model_->path(); }
  void SetLeaves(const py::bytes& leaves) {
    const std::string bytes(leaves);
    Unlocked([&] { return model_->SetLeaves(bytes); });
  }
  // `data`: any C-contiguous buffer (bytes, a numpy array from ray.get).
  // Writes from several threads run at once (IncomingModel's contract).
  void Write(uint64_t offset, const py::object& data) {
    BufferView view(data, "write");
    Unlocked([&] { return model_->Write(offset, view.data(), view.size()); });
  }
  py::object Commit(const std::string& kind, const std::string& source, int64_t duration_ms) {
    v1::Origin origin;
    origin.set_kind(kind);
    origin.set_source(source);
    origin.set_duration_ms(duration_ms);
    return ToPython(Unlocked([&] { return model_->Commit(origin); }));
  }
  void Abort() {
    Unlocked([&] { model_->Abort(); });
  }

 private:
  std::unique_ptr<IncomingModel> model_;
};

// A Python-visible handle on this process's C++ client for a socket
// (Client::ForThisProcess: one per process and socket, a forked child
// getting its own).
class PyClient {
 public:
  explicit PyClient(const std::string& socket) : client_(Client::ForThisProcess(socket)) {}

  std::string socket() const { return client_->socket(); }

  // storages: [(address, nbytes)]; tensors: [(name, storage, byte_offset,
  // dtype name, shape, strides)]. The caller keeps the memory alive.
  py::object Publish(const std::vector<std::pair<uintptr_t, uint64_t>>& storages,
                     const std::vector<std::tuple<std::string, uint32_t, uint64_t, std::string, std::vector<int64_t>,
                                                  std::vector<int64_t>>>& tensors,
                     const py::bytes& metadata, const std::string& format, const std::string& name, bool pin) {
    ModelSourceBuilder builder;
    for (const auto& [address, nbytes] : storages) builder.AddStorage(reinterpret_cast<const void*>(address), nbytes);
    for (const auto& [tname, storage, offset, dtype, shape, strides] : tensors) {
      Check(builder.AddTensor(tname, storage, offset, dtype, shape, strides));
    }
    builder.set_metadata(std::string(metadata));
    builder.set_format(format);
    ModelSource source = std::move(builder).Build();
    PublishOptions options;
    options.name = name;
    options.pin = pin;
    return ToPython(Unlocked([&] { return client_->Publish(source, options); }));
  }

  // A checkpoint file or model directory published as `zerocopy preload`
  // does it (formats' ReadNativeCheckpoint: a directory's small files come
  // along), recorded as preloaded from its real path.
  py::object Preload(const std::string& path, const std::string& format_name, const std::string& name, bool pin) {
    return ToPython(Unlocked([&]() -> absl::StatusOr<v1::ModelInfo> {
      ZC_ASSIGN_OR_RETURN(CheckpointFormat format, CheckpointFormatFor(path, format_name));
      ZC_ASSIGN_OR_RETURN(Checkpoint checkpoint, ReadNativeCheckpoint(path, format));
      PublishOptions options;
      options.name = name;
      options.pin = pin;
      options.origin = PreloadedFrom(path);
      return client_->Publish(checkpoint.source, options);
    }));
  }

  std::shared_ptr<Mapping> Map(const std::string& ref, bool read_only, bool populate) {
    MapOptions options;
    options.read_only = read_only;
    options.populate = populate;
    return std::make_shared<Mapping>(Unlocked([&] { return client_->Map(ref, options); }));
  }

  // Model `digest` from its segment file at once, its lease taken in the
  // background (Client::MapSegment).
  std::shared_ptr<Mapping> MapSegment(const std::string& digest, const std::string& segment_path, bool read_only,
                                      bool populate) {
    MapOptions options;
    options.read_only = read_only;
    options.populate = populate;
    return std::make_shared<Mapping>(Unlocked([&] { return client_->MapSegment(digest, segment_path, options); }));
  }
  void WaitForLeases() {
    Unlocked([&] { client_->WaitForLeases(); });
  }

  // The model's shared copy on this process's GPU `ordinal`.
  std::shared_ptr<DeviceMapping> MapDevice(const std::string& ref, int ordinal) {
    return std::make_shared<DeviceMapping>(Unlocked([&] { return client_->MapDevice(ref, ordinal); }));
  }

  std::shared_ptr<PyIncoming> Receive(const py::bytes& manifest_bytes, const std::string& digest) {
    v1::Manifest manifest;
    if (!manifest.ParseFromString(std::string(manifest_bytes))) {
      Raise(absl::InvalidArgumentError("the manifest bytes do not parse as a zerocopy.v1.Manifest"));
    }
    return std::make_shared<PyIncoming>(Unlocked([&] { return client_->Receive(manifest, digest); }));
  }

  // The model's info, with its tensors, metadata and manifest (serialized),
  // and with_leaves, its leaf digests (EncodeLeaves bytes).
  py::object Get(const std::string& ref, bool with_leaves) {
    ModelAnswer response = Unlocked([&] { return client_->Get(ref, with_leaves); });
    py::object d = ToPython(response.model());
    d["tensors"] = TensorsToPython(response.manifest());
    d["metadata"] = py::bytes(response.manifest().metadata());
    d["manifest"] = py::bytes(response.manifest().SerializeAsString());
    if (with_leaves) d["leaves"] = py::bytes(response.leaves());
    return d;
  }

  py::object List() {
    return ToPython(Unlocked([&] { return client_->List(); }))["models"];
  }
  std::string Delete(const std::string& ref, bool force) {
    return Unlocked([&] { return client_->Delete(ref, force); });
  }
  py::object Tag(const std::string& name, const std::string& ref) {
    return ToPython(Unlocked([&] { return client_->Tag(name, ref); }));
  }
  py::object Pin(const std::string& ref, bool pinned) {
    return ToPython(Unlocked([&] { return client_->Pin(ref, pinned); }));
  }
  py::object Stats() {
    return ToPython(Unlocked([&] { return client_->Stats(); }));
  }
  uint64_t SessionId() {
    return Unlocked([&] { return client_->SessionId(); });
  }

 private:
  std::shared_ptr<Client> client_;
};

}  // namespace

PYBIND11_MODULE(_zerocopy, m) {
  m.doc() = "zerocopy's C++ client (use the ray_zerocopy package, not this module)";
  m.attr("__version__") = ZEROCOPY_VERSION;
  m.def("default_socket", &DefaultSocketPath, "the socket a client uses when none is given");
  m.def(
      "leaves_match",
      [](const py::object& data, uint64_t offset, uint64_t size, const py::bytes& leaves) {
        BufferView view(data, "leaves_match");
        const std::string encoded(leaves);
        absl::Status status;
        {
          py::gil_scoped_release unlocked;  // hashes the bytes
          status = CheckLeaves(view.data(), view.size(), offset, size, encoded);
        }
        if (absl::IsDataLoss(status)) return false;
        Check(status);
        return true;
      },
      py::arg("data"), py::arg("offset"), py::arg("size"), py::arg("leaves"),
      "whether `data`, bytes [offset, offset+len) of a model of `size` bytes, matches its leaf digests");
  m.def(
      "torch_dtypes",
      [] {
        std::vector<std::pair<std::string, std::string>> names;
        for (const auto& [torch_name, dtype] : TorchDTypes()) names.emplace_back(torch_name, v1::DType_Name(dtype));
        return names;
      },
      "[(torch's name of a dtype, its wire name)]: 'float32' -> 'F32', ...");

  // The host mapping exposes its bytes read-only through the buffer
  // protocol (memoryview(mapping)); the view keeps the mapping alive.
  BindMapping<Mapping>(m, "Mapping", py::buffer_protocol())
      .def("compute_digest",
           [](const Mapping& self) {
             py::gil_scoped_release unlocked;  // hashes the whole model
             return self.model()->ComputeDigest();
           })
      .def(
          "files",
          [](const Mapping& self) {
            py::dict out;
            for (const auto& f : self.model()->manifest().files()) {
              auto bytes = self.model()->File(f.name());
              Check(bytes.status());
              out[py::str(f.name())] = py::bytes(bytes->data(), bytes->size());
            }
            return out;
          },
          "{name: bytes} of the files kept with the model (a config, a tokenizer, a program)")
      .def_buffer([](const Mapping& self) {
        const auto& model = self.model();
        return py::buffer_info(const_cast<uint8_t*>(model->data()), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(model->size())}, {1}, /*readonly=*/true);
      });
  py::class_<PyIncoming, std::shared_ptr<PyIncoming>>(m, "Incoming")
      .def_property_readonly("size", &PyIncoming::size)
      .def_property_readonly("digest", &PyIncoming::digest)
      .def_property_readonly("path", &PyIncoming::path, "the staging file (its relays read it)")
      .def("set_leaves", &PyIncoming::SetLeaves, py::arg("leaves"))
      .def("write", &PyIncoming::Write, py::arg("offset"), py::arg("data"))
      .def("commit", &PyIncoming::Commit, py::arg("kind"), py::arg("source") = "", py::arg("duration_ms") = 0)
      .def("abort", &PyIncoming::Abort);
  BindMapping<DeviceMapping>(m, "DeviceMapping")
      .def_property_readonly("gpu_uuid", [](const DeviceMapping& self) { return self.model()->gpu_uuid(); })
      .def_property_readonly("device_ordinal", [](const DeviceMapping& self) { return self.model()->device_ordinal(); })
      .def_property_readonly("fake", [](const DeviceMapping& self) { return self.model()->fake(); });

  py::class_<PyClient, std::shared_ptr<PyClient>>(m, "Client")
      .def(py::init<const std::string&>(), py::arg("socket") = "",
           "this process's client for `socket` (default: $ZEROCOPY_SOCKET, then the daemon's default)")
      .def_property_readonly("socket", &PyClient::socket)
      .def("publish", &PyClient::Publish, py::arg("storages"), py::arg("tensors"), py::arg("metadata") = py::bytes(),
           py::arg("format") = "torch", py::arg("name") = "", py::arg("pin") = false)
      .def("preload", &PyClient::Preload, py::arg("path"), py::arg("format") = "auto", py::arg("name") = "",
           py::arg("pin") = false)
      .def("map", &PyClient::Map, py::arg("ref"), py::arg("read_only") = false, py::arg("populate") = false)
      .def("map_segment", &PyClient::MapSegment, py::arg("digest"), py::arg("segment_path"),
           py::arg("read_only") = false, py::arg("populate") = false)
      .def("wait_for_leases", &PyClient::WaitForLeases)
      .def("map_device", &PyClient::MapDevice, py::arg("ref"), py::arg("ordinal"))
      .def("get", &PyClient::Get, py::arg("ref"), py::arg("with_leaves") = false)
      .def("receive", &PyClient::Receive, py::arg("manifest"), py::arg("digest"))
      .def("list", &PyClient::List)
      .def("delete", &PyClient::Delete, py::arg("ref"), py::arg("force") = false)
      .def("tag", &PyClient::Tag, py::arg("name"), py::arg("ref"))
      .def("pin", &PyClient::Pin, py::arg("ref"), py::arg("pinned") = true)
      .def("stats", &PyClient::Stats)
      .def("session_id", &PyClient::SessionId);
}

}  // namespace zerocopy::python
