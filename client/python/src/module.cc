// _zerocopy: the C++ client for Python. Thin: a Client (publish, get, map,
// list, delete, tag, pin, stats) and a Mapping whose storages and tensors
// leave as DLPack capsules. Weights never pass through Python objects; the
// GIL is released for every daemon call and every copy.
//
// Errors raise the classes in ray_zerocopy.errors, chosen by status code.
#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "zerocopy/client.h"
#include "zerocopy/device_model.h"
#include "zerocopy/dtype.h"
#include "zerocopy/mapped_model.h"

namespace py = pybind11;

namespace zerocopy::python {
namespace {

[[noreturn]] void RaiseAs(const absl::Status& status, const char* cls) {
  py::object type = py::module_::import("ray_zerocopy.errors").attr(cls);
  py::object error = type(std::string(status.message()), absl::StatusCodeToString(status.code()));
  PyErr_SetObject(type.ptr(), error.ptr());
  throw py::error_already_set();
}

[[noreturn]] void Raise(const absl::Status& status) {
  const char* cls;
  switch (status.code()) {
    case absl::StatusCode::kNotFound: cls = "ModelNotFoundError"; break;
    case absl::StatusCode::kUnavailable: cls = "DaemonUnavailableError"; break;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: cls = "InvalidModelError"; break;
    case absl::StatusCode::kResourceExhausted: cls = "OutOfSpaceError"; break;
    case absl::StatusCode::kPermissionDenied: cls = "PermissionDeniedError"; break;
    case absl::StatusCode::kDataLoss: cls = "CorruptModelError"; break;
    case absl::StatusCode::kAlreadyExists: cls = "AlreadyExistsError"; break;
    default: cls = "ZeroCopyError";
  }
  RaiseAs(status, cls);
}

template <typename T>
T Check(absl::StatusOr<T> value) {
  if (!value.ok()) Raise(value.status());
  return *std::move(value);
}

py::dict Info(const v1::ModelInfo& m) {
  py::dict d;
  d["digest"] = m.digest();
  d["names"] = std::vector<std::string>(m.names().begin(), m.names().end());
  d["size"] = m.size();
  d["tensor_count"] = m.tensor_count();
  d["storage_count"] = m.storage_count();
  d["pinned"] = m.pinned();
  d["leases"] = m.leases();
  d["segment_path"] = m.segment_path();
  d["huge_pages"] = m.huge_pages();
  d["format"] = m.format();
  d["created_unix_ms"] = m.created_unix_ms();
  d["last_used_unix_ms"] = m.last_used_unix_ms();
  d["gpu_uuids"] = std::vector<std::string>(m.gpu_uuids().begin(), m.gpu_uuids().end());
  py::dict origin;
  origin["kind"] = m.origin().kind();
  origin["source"] = m.origin().source();
  origin["duration_ms"] = m.origin().duration_ms();
  d["origin"] = origin;
  d["publisher_uid"] = m.has_publisher_uid() ? py::object(py::int_(m.publisher_uid())) : py::object(py::none());
  d["publisher_gid"] = m.has_publisher_gid() ? py::object(py::int_(m.publisher_gid())) : py::object(py::none());
  return d;
}

py::dict TensorSpec(const v1::Manifest& manifest, const v1::Tensor& t) {
  py::dict d;
  d["name"] = t.name();
  d["storage"] = t.storage();
  d["byte_offset"] = t.byte_offset();
  d["dtype"] = v1::DType_Name(t.dtype());
  d["shape"] = std::vector<int64_t>(t.shape().begin(), t.shape().end());
  d["strides"] = std::vector<int64_t>(t.strides().begin(), t.strides().end());
  return d;
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

// A model mapped into this process: MappedModel (host) or DeviceModel (a
// GPU's shared copy).
template <typename Model>
class MappingOf {
 public:
  explicit MappingOf(std::shared_ptr<Model> model) : model_(std::move(model)) {}

  py::dict info() const { return Info(model_->info()); }
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
  py::list tensors() const {
    py::list out;
    for (const auto& t : model_->manifest().tensors()) out.append(TensorSpec(model_->manifest(), t));
    return out;
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
      .def("storage", &M::storage, py::arg("index"), "storage `index` as a uint8 DLPack capsule")
      .def("tensor", &M::tensor, py::arg("index"), "tensor `index` as a DLPack capsule");
}

// A model arriving from another node (see incoming_model.h): write the
// segment's bytes from any buffer, then commit under the expected digest.
class PyIncoming {
 public:
  explicit PyIncoming(std::unique_ptr<IncomingModel> model) : model_(std::move(model)) {}
  uint64_t size() const { return model_->size(); }
  std::string digest() const { return model_->digest(); }
  // `data`: any C-contiguous buffer (bytes, a numpy array from ray.get).
  void Write(uint64_t offset, const py::object& data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();
      Raise(absl::InvalidArgumentError("write needs a C-contiguous buffer (bytes, a contiguous numpy array)"));
    }
    absl::Status status;
    {
      py::gil_scoped_release unlocked;
      std::lock_guard<std::mutex> lock(mu_);  // never beside Commit/Abort (IncomingModel is not thread-safe for that)
      status = model_->Write(offset, view.buf, static_cast<uint64_t>(view.len));
    }
    PyBuffer_Release(&view);
    if (!status.ok()) Raise(status);
  }
  py::dict Commit(const std::string& kind, const std::string& source, int64_t duration_ms) {
    v1::Origin origin;
    origin.set_kind(kind);
    origin.set_source(source);
    origin.set_duration_ms(duration_ms);
    absl::StatusOr<v1::ModelInfo> info;
    {
      py::gil_scoped_release unlocked;
      std::lock_guard<std::mutex> lock(mu_);
      info = model_->Commit(origin);
    }
    return Info(Check(std::move(info)));
  }
  void Abort() {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    model_->Abort();
  }

 private:
  std::mutex mu_;
  std::unique_ptr<IncomingModel> model_;
};

// One Python-visible client; the C++ client refuses use after fork, and the
// Python layer keeps one per process.
class PyClient {
 public:
  PyClient(const std::string& socket, double timeout_s) {
    ClientOptions options;
    options.socket = socket;
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    client_ = Client::Create(options);
  }

  std::string socket() const { return client_->socket(); }

  // storages: [(address, nbytes)]; tensors: [(name, storage, byte_offset,
  // dtype name, shape, strides)]. The caller keeps the memory alive.
  py::dict Publish(const std::vector<std::pair<uintptr_t, uint64_t>>& storages,
                   const std::vector<std::tuple<std::string, uint32_t, uint64_t, std::string, std::vector<int64_t>,
                                                std::vector<int64_t>>>& tensors,
                   const py::bytes& metadata, const std::string& format, const std::string& name, bool pin) {
    ModelSource source;
    for (const auto& [address, nbytes] : storages) {
      source.manifest.add_storages()->set_size(nbytes);
      source.storage_data.push_back(reinterpret_cast<const void*>(address));
    }
    for (const auto& [tname, storage, offset, dtype, shape, strides] : tensors) {
      v1::DType parsed;
      if (!v1::DType_Parse(dtype, &parsed) || parsed == v1::DTYPE_UNSPECIFIED) {
        Raise(absl::InvalidArgumentError("tensor '" + tname + "' has unknown dtype '" + dtype + "'"));
      }
      auto* t = source.manifest.add_tensors();
      t->set_name(tname);
      t->set_storage(storage);
      t->set_byte_offset(offset);
      t->set_dtype(parsed);
      for (int64_t d : shape) t->add_shape(d);
      for (int64_t s : strides) t->add_strides(s);
    }
    source.manifest.set_metadata(std::string(metadata));
    source.manifest.set_format(format);
    PublishOptions options;
    options.name = name;
    options.pin = pin;
    absl::StatusOr<v1::ModelInfo> info;
    {
      py::gil_scoped_release unlocked;
      info = client_->Publish(source, options);
    }
    return Info(Check(std::move(info)));
  }

  std::shared_ptr<Mapping> Map(const std::string& ref, bool read_only, bool populate) {
    MapOptions options;
    options.read_only = read_only;
    options.populate = populate;
    absl::StatusOr<std::shared_ptr<MappedModel>> mapped;
    {
      py::gil_scoped_release unlocked;
      mapped = client_->Map(ref, options);
    }
    return std::make_shared<Mapping>(Check(std::move(mapped)));
  }

  // The model's shared copy on this process's GPU `ordinal` (CUDA, or the
  // $ZEROCOPY_FAKE_GPUS of tests).
  std::shared_ptr<DeviceMapping> MapDevice(const std::string& ref, int ordinal) {
    absl::StatusOr<std::shared_ptr<DeviceModel>> mapped;
    {
      py::gil_scoped_release unlocked;
      auto uuid = GpuUuid(ordinal);
      if (!uuid.ok()) {
        mapped = absl::FailedPreconditionError(absl::StrCat("GPU ", ordinal, ": ", uuid.status().message()));
      } else {
        mapped = client_->MapDevice(ref, *uuid);
      }
    }
    // No shared copy to be had (GPU sharing off or not built, the daemon or
    // CUDA refusing this GPU): the class the wrappers fall back on.
    if (absl::IsUnimplemented(mapped.status()) || absl::IsFailedPrecondition(mapped.status())) {
      RaiseAs(mapped.status(), "GpuSharingUnavailableError");
    }
    return std::make_shared<DeviceMapping>(Check(std::move(mapped)));
  }

  std::shared_ptr<PyIncoming> Receive(const py::bytes& manifest_bytes, const std::string& digest) {
    v1::Manifest manifest;
    if (!manifest.ParseFromString(std::string(manifest_bytes))) {
      Raise(absl::InvalidArgumentError("the manifest bytes do not parse as a zerocopy.v1.Manifest"));
    }
    absl::StatusOr<std::unique_ptr<IncomingModel>> incoming;
    {
      py::gil_scoped_release unlocked;
      incoming = client_->Receive(manifest, digest);
    }
    return std::make_shared<PyIncoming>(Check(std::move(incoming)));
  }

  py::dict Get(const std::string& ref) {
    absl::StatusOr<v1::GetModelResponse> got;
    {
      py::gil_scoped_release unlocked;
      got = client_->Get(ref);
    }
    auto response = Check(std::move(got));
    py::dict d = Info(response.model());
    py::list tensors;
    for (const auto& t : response.manifest().tensors()) tensors.append(TensorSpec(response.manifest(), t));
    d["tensors"] = tensors;
    d["metadata"] = py::bytes(response.manifest().metadata());
    d["manifest"] = py::bytes(response.manifest().SerializeAsString());
    return d;
  }

  py::list List() {
    absl::StatusOr<v1::ListModelsResponse> list;
    {
      py::gil_scoped_release unlocked;
      list = client_->List();
    }
    v1::ListModelsResponse response = Check(std::move(list));
    py::list out;
    for (const auto& m : response.models()) out.append(Info(m));
    return out;
  }

  std::string Delete(const std::string& ref, bool force) {
    absl::StatusOr<std::string> deleted;
    {
      py::gil_scoped_release unlocked;
      deleted = client_->Delete(ref, force);
    }
    return Check(std::move(deleted));
  }

  py::dict Tag(const std::string& name, const std::string& ref) {
    absl::StatusOr<v1::ModelInfo> info;
    {
      py::gil_scoped_release unlocked;
      info = client_->Tag(name, ref);
    }
    return Info(Check(std::move(info)));
  }

  py::dict Pin(const std::string& ref, bool pinned) {
    absl::StatusOr<v1::ModelInfo> info;
    {
      py::gil_scoped_release unlocked;
      info = client_->Pin(ref, pinned);
    }
    return Info(Check(std::move(info)));
  }

  py::dict Stats() {
    absl::StatusOr<v1::GetStatsResponse> got;
    {
      py::gil_scoped_release unlocked;
      got = client_->Stats();
    }
    auto s = Check(std::move(got));
    py::dict d;
    d["bytes_used"] = s.bytes_used();
    d["bytes_staging"] = s.bytes_staging();
    d["host_budget"] = s.host_budget();
    d["models"] = s.models();
    d["evictions"] = s.evictions();
    d["bytes_evicted"] = s.bytes_evicted();
    d["segment_dir"] = s.segment_dir();
    d["segment_dir_free"] = s.segment_dir_free();
    d["huge_pages"] = s.huge_pages();
    d["version"] = s.version();
    d["pid"] = s.pid();
    d["pulls"] = s.pulls();
    d["bytes_pulled"] = s.bytes_pulled();
    py::dict requests;
    for (const auto& [method, count] : s.requests()) requests[py::str(method)] = count;
    d["requests"] = requests;
    py::list sessions;
    for (const auto& session : s.sessions()) {
      py::dict e;
      e["id"] = session.id();
      e["pid"] = session.pid();
      e["uid"] = session.uid();
      e["gid"] = session.gid();
      e["leases"] = session.leases();
      sessions.append(e);
    }
    d["sessions"] = sessions;
    d["gpu_backend"] = s.gpu_backend();
    py::list gpus;
    for (const auto& g : s.gpus()) {
      py::dict e;
      e["uuid"] = g.uuid();
      e["budget"] = g.budget();
      e["bytes_used"] = g.bytes_used();
      e["copies"] = g.copies();
      e["leases"] = g.leases();
      e["uploads"] = g.uploads();
      e["evictions"] = g.evictions();
      e["total_memory"] = g.total_memory();
      gpus.append(e);
    }
    d["gpus"] = gpus;
    return d;
  }

  uint64_t SessionId() {
    absl::StatusOr<uint64_t> id;
    {
      py::gil_scoped_release unlocked;
      id = client_->SessionId();
    }
    return Check(std::move(id));
  }

 private:
  std::shared_ptr<Client> client_;
};

}  // namespace

PYBIND11_MODULE(_zerocopy, m) {
  m.doc() = "zerocopy's C++ client (use the ray_zerocopy package, not this module)";
  m.attr("__version__") = ZEROCOPY_VERSION;
  m.def("default_socket", &DefaultSocketPath, "the socket a client uses when none is given");

  // The host mapping exposes its bytes read-only through the buffer
  // protocol (memoryview(mapping)); the view keeps the mapping alive.
  BindMapping<Mapping>(m, "Mapping", py::buffer_protocol())
      .def("compute_digest",
           [](const Mapping& self) {
             py::gil_scoped_release unlocked;
             return self.model()->ComputeDigest();
           })
      .def_buffer([](const Mapping& self) {
        const auto& model = self.model();
        return py::buffer_info(const_cast<uint8_t*>(model->data()), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(model->size())}, {1}, /*readonly=*/true);
      });
  py::class_<PyIncoming, std::shared_ptr<PyIncoming>>(m, "Incoming")
      .def_property_readonly("size", &PyIncoming::size)
      .def_property_readonly("digest", &PyIncoming::digest)
      .def("write", &PyIncoming::Write, py::arg("offset"), py::arg("data"))
      .def("commit", &PyIncoming::Commit, py::arg("kind"), py::arg("source") = "", py::arg("duration_ms") = 0)
      .def("abort", &PyIncoming::Abort);
  BindMapping<DeviceMapping>(m, "DeviceMapping")
      .def_property_readonly("gpu_uuid", [](const DeviceMapping& self) { return self.model()->gpu_uuid(); })
      .def_property_readonly("device_ordinal", [](const DeviceMapping& self) { return self.model()->device_ordinal(); })
      .def_property_readonly("fake", [](const DeviceMapping& self) { return self.model()->fake(); });

  py::class_<PyClient, std::shared_ptr<PyClient>>(m, "Client")
      .def(py::init<const std::string&, double>(), py::arg("socket") = "", py::arg("timeout") = 30.0)
      .def_property_readonly("socket", &PyClient::socket)
      .def("publish", &PyClient::Publish, py::arg("storages"), py::arg("tensors"), py::arg("metadata") = py::bytes(),
           py::arg("format") = "torch", py::arg("name") = "", py::arg("pin") = false)
      .def("map", &PyClient::Map, py::arg("ref"), py::arg("read_only") = false, py::arg("populate") = false)
      .def("map_device", &PyClient::MapDevice, py::arg("ref"), py::arg("ordinal"))
      .def("get", &PyClient::Get, py::arg("ref"))
      .def("receive", &PyClient::Receive, py::arg("manifest"), py::arg("digest"))
      .def("list", &PyClient::List)
      .def("delete", &PyClient::Delete, py::arg("ref"), py::arg("force") = false)
      .def("tag", &PyClient::Tag, py::arg("name"), py::arg("ref"))
      .def("pin", &PyClient::Pin, py::arg("ref"), py::arg("pinned") = true)
      .def("stats", &PyClient::Stats)
      .def("session_id", &PyClient::SessionId);
}

}  // namespace zerocopy::python
