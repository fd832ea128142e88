"""Objects holding torch tensors <-> models in zerocopyd.

Publishing pickles the object with every tensor storage replaced by a
reference (pickle's persistent_id), so the pickle (the model's metadata) is
a weight-free skeleton, and copies each distinct storage once into the
model's segment. Loading maps the segment and unpickles the skeleton with
each reference resolved to a torch storage over the mapping: no weight is
copied, tied weights stay tied (one storage), views keep their offsets and
strides, and any object graph pickle can walk is found (nested attributes,
lists, dicts, private attributes).

The mapping is copy-on-write: a process that writes into a weight gets a
private page; other processes keep the original.

device="cuda:N": the tensors are views of the daemon's one device copy of
the model on that GPU, opened through CUDA IPC (every process on the GPU
shares it). That memory is shared and writable: a write changes the
weights for every process on the GPU.
"""
import collections
import contextlib
import functools
import gc
import io
import pickle

import torch

import os

from . import _cluster, _native
from .errors import (GpuSharingUnavailableError, InvalidModelError, ModelNotFoundError, PermissionDeniedError,
                     ZeroCopyError)

# A pickled skeleton's first line. /2 may refer to manifest tensors
# ("tensor" persistent ids); /1 (before 2026-12) only to storages. A loader
# reads both; an older one meeting /2 says the model holds no skeleton it
# knows, rather than failing inside the pickle.
MAGIC = b"zerocopy-torch-pickle/2\n"
_MAGIC_V1 = b"zerocopy-torch-pickle/1\n"


def is_skeleton(metadata: bytes) -> bool:
    """The model's metadata is a pickled skeleton (of either version)."""
    return metadata.startswith(MAGIC) or metadata.startswith(_MAGIC_V1)

# torch dtype -> wire name ("F32", ...), from the C++ table (common/'s
# dtype.h): the dtypes this torch has among those zerocopy holds.
_DTYPES = {getattr(torch, name): code for name, code in _native.torch_dtypes() if hasattr(torch, name)}
_TORCH_DTYPES = {code: dtype for dtype, code in _DTYPES.items()}


def _pickle_module():
    """cloudpickle when available (classes defined in __main__, as in most
    Ray scripts, travel by value), else the standard library's pickle."""
    try:
        import cloudpickle
        return cloudpickle
    except ImportError:
        pass
    try:
        from ray import cloudpickle
        return cloudpickle
    except ImportError:
        return pickle


def dtype_code(dtype: torch.dtype) -> str:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise InvalidModelError(f"dtype {dtype} cannot be shared through zerocopy", "INVALID_ARGUMENT") from None


class _Storages:
    """Distinct untyped storages, in first-seen order, each copied to host
    memory once if it lives elsewhere."""

    def __init__(self):
        self.index: dict = {}
        self.host: list = []

    def add(self, storage: torch.UntypedStorage) -> int:
        key = (storage.device, storage.data_ptr(), storage.nbytes())
        i = self.index.get(key)
        if i is None:
            i = len(self.host)
            self.index[key] = i
            self.host.append(storage if storage.device.type == "cpu" else storage.cpu())
        return i


def _view(t: torch.Tensor) -> tuple:
    """What makes two tensors the same view of the same memory."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())


def _named_tensors(obj):
    """(name, tensor) of every parameter and buffer, tied ones under each of
    their names, for the manifest (what `zerocopy inspect` shows and
    load_state_dict returns)."""
    if isinstance(obj, torch.nn.Module):
        yield from obj.named_parameters(remove_duplicate=False)
        yield from obj.named_buffers(remove_duplicate=False)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                yield str(k), v


def publish(obj, name: str = "", pin: bool = False, socket: str | None = None) -> dict:
    """Publishes `obj` (an nn.Module, a dict of tensors, or any picklable
    object holding tensors); returns the model's info (digest, size, ...)."""
    storages = _Storages()
    pickler_base = _pickle_module().Pickler
    tensors = []
    by_view: dict = {}  # a manifest tensor's view -> its index
    for tname, t in _named_tensors(obj):
        if t.layout != torch.strided:
            raise InvalidModelError(f"tensor '{tname}' has layout {t.layout}: only strided tensors", "INVALID_ARGUMENT")
        s = storages.add(t.untyped_storage())
        by_view.setdefault(_view(t), len(tensors))
        tensors.append((tname, s, t.storage_offset() * t.element_size(), dtype_code(t.dtype),
                        list(t.shape), list(t.stride())))
    def storage_id(o):
        if isinstance(o, torch.storage.TypedStorage):
            return ("storage", storages.add(o._untyped_storage), dtype_code(o.dtype))
        if isinstance(o, torch.UntypedStorage):
            return ("storage", storages.add(o), "U8")
        return None

    Pickler = skeleton_pickler(pickler_base, _view, by_view, storage_id)
    buffer = io.BytesIO()
    buffer.write(MAGIC)
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    regions = [(s.data_ptr(), s.nbytes()) for s in storages.host]
    info = _native.client(socket).publish(regions, tensors, buffer.getvalue(), "torch", name, pin)
    _cluster.register(info["digest"], name, socket)
    return info


def skeleton_pickler(base, view_of, by_view: dict, other=lambda o: None, reduce=lambda o: NotImplemented):
    """A pickler class (over `base`) that pickles each plain tensor which is
    a manifest tensor's view (by_view: view_of(tensor) -> its index) as a
    reference to it, which unpickle() resolves to the tensor the mapping
    makes; `other(o)` gives any other object's reference (None: pickled as
    torch pickles it), `reduce(o)` its reduction (NotImplemented: as pickle
    does). ExportedProgram.module()s pickle as a portable GraphModule
    (_portable_graph_module)."""
    objects: dict = {}  # manifest index -> the distinct tensor objects pickled as it

    class Pickler(base):
        def persistent_id(self, o):
            # A plain tensor that is a manifest tensor's view (a parameter's
            # data, a buffer) is pickled as a reference to it: load() hands
            # out the tensor the mapping made, without rebuilding it.
            # Not: a tensor with hooks or attributes of its own, a lazily
            # conjugated or negated view (the bit is not in the manifest),
            # a tensor without strided storage (sparse, nested): torch
            # pickles those as ever.
            if (type(o) is torch.Tensor and o.layout is torch.strided and not o.is_nested and not o.is_conj()
                    and not o.is_neg() and o._backward_hooks is None and not o.__dict__):
                i = by_view.get(view_of(o))
                if i is not None:
                    seen = objects.setdefault(i, [])
                    k = next((k for k, x in enumerate(seen) if x is o), None)
                    if k is None:  # two objects viewing the same stay two
                        k = len(seen)
                        seen.append(o)
                    return ("tensor", i, o.requires_grad, k)
            return other(o)

        def reducer_override(self, o):
            reduced = reduce(o)
            if reduced is not NotImplemented:
                return reduced
            if _is_exported_module(o):
                return _portable_graph_module(o).__reduce__()
            base = getattr(super(), "reducer_override", None)  # cloudpickle's; the standard Pickler has none
            return base(o) if base is not None else NotImplemented

    return Pickler


@functools.lru_cache(maxsize=None)
def _exported_module_type():
    try:
        from torch.export._unlift import _StatefulGraphModule
        return _StatefulGraphModule
    except ImportError:  # a torch without it: no object is one
        return ()


def _is_exported_module(o) -> bool:
    """An ExportedProgram's module() (torch.export's unlifted graph module)."""
    return isinstance(o, _exported_module_type())


def _portable_graph_module(m) -> torch.fx.GraphModule:
    """ExportedProgram.module() as a plain GraphModule that pickles (torch
    pickles neither the original's hooks and guard function, closures, nor
    its shape environment): the same graph and the same parameters,
    buffers and constants (not copies), without the input guards
    (``_guards_fn``), so inputs of shapes the program was not exported for
    fail inside the graph rather than with torch's guard message."""
    graph = torch.fx.Graph()
    graph._codegen = m.graph._codegen  # the pytree in/out specs: callers pass what they passed before
    graph.output(graph.graph_copy(m.graph, {}))
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
    out = torch.fx.GraphModule(m, graph)
    out.meta = {}
    out.__dict__.pop("shape_env", None)
    out.train(m.training)
    return out


# torch.utils.dlpack.from_dlpack's own import of a capsule, without the
# wrapper's protocol checks (a capsule is what every mapping hands out).
_from_dlpack = torch._C._from_dlpack


@contextlib.contextmanager
def _no_gc():
    """Python's cycle collector held off while a load builds its thousands
    of tuples and tensors: each collection it would trigger walks every
    object torch made (~0.1 s a time), which is what a load of 10,000
    tensors spent most of its time on. Any cycle a skeleton makes is
    collected as usual afterwards. The collector is off for the whole
    process meanwhile: cycles other threads make wait for it (memory for
    the load's duration, not leaked). A load in another thread meanwhile
    may turn it back on early: that costs time, never memory."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_dispatch_stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)


def _fake_mode_possible() -> bool:
    """False when no fake mode can be in force: no dispatch mode on the
    stack and no tracing context, the two places detect_fake_mode looks
    (it costs ~30 us a call, its first in a process twice that)."""
    if _dispatch_stack_depth is None:  # a torch without it: ask detect_fake_mode
        return True
    return _dispatch_stack_depth() != 0 or torch._guards.TracingContext.try_get() is not None


def _storage(mapping, index: int) -> torch.UntypedStorage:
    return _from_dlpack(mapping.storage(index)).untyped_storage()


def gpu_device(device) -> torch.device | None:
    """The CUDA device `device` names (with its index), or None for the
    host."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise InvalidModelError(f"device {device}: zerocopy shares weights on 'cpu' and 'cuda' devices",
                                "INVALID_ARGUMENT")
    if device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        device = torch.device("cuda", index)
    return device


def _map(ref: str, socket, read_only=False, populate=False, device=None, segment_path=None):
    """The host mapping, or the shared device copy on a CUDA `device`. With
    the `segment_path` a digest had (a wrapper records it when publishing),
    the mapping is made from the daemon's sealed files at once and the lease
    taken in the background (Client::MapSegment), when they are there.
    Inside Ray, a model this node's daemon lacks (by digest, or by a name
    the cluster knows) is pulled here first (_cluster.bring)."""
    try:
        return _map_here(ref, socket, read_only, populate, device, segment_path)
    except ModelNotFoundError:
        digest = _cluster.bring(ref, socket)
        if digest is None:
            raise
    return _map_here(ref if ref == digest else digest, socket, read_only, populate, device, None)


def _map_here(ref: str, socket, read_only, populate, device, segment_path):
    gpu = gpu_device(device)
    if gpu is None:
        if segment_path and _DIGEST.fullmatch(ref):
            return _native.client(socket).map_segment(ref, segment_path, read_only=read_only, populate=populate)
        return _native.client(socket).map(ref, read_only=read_only, populate=populate)
    try:
        return _native.client(socket).map_device(ref, gpu.index)
    except ZeroCopyError as e:
        # No shared copy to be had (GPU sharing off or not built, the daemon
        # or CUDA refusing this GPU): the class the wrappers fall back on.
        if e.code in ("UNIMPLEMENTED", "FAILED_PRECONDITION"):
            raise GpuSharingUnavailableError(e.message, e.code) from None
        raise


_DIGEST = _cluster.DIGEST


def _trusted_ids(variable: str) -> set[int]:
    try:
        return {int(x) for x in os.environ.get(variable, "").replace(",", " ").split()}
    except ValueError:
        raise InvalidModelError(f"${variable} must list numeric ids separated by commas or spaces", "INVALID_ARGUMENT")


def check_publisher(ref: str, info: dict, what: str) -> None:
    """A model's metadata (a pickled skeleton, a TorchScript archive) is code
    of whoever published it. Loaded by name (which any member of the
    socket's group may have taken), it runs only if its publisher is this
    process's own uid, root, or listed in $ZEROCOPY_TRUST_UIDS (or their
    group in $ZEROCOPY_TRUST_GIDS). By digest it always runs: a digest covers
    the metadata, and whoever holds one (a wrapper made by from_model) chose
    those exact bytes. Raises PermissionDeniedError saying who published it
    and how to trust them or load only the weights."""
    if _DIGEST.fullmatch(ref):
        return
    uid, gid = info.get("publisher_uid"), info.get("publisher_gid")
    if uid is not None and (uid in (os.geteuid(), 0) or uid in _trusted_ids("ZEROCOPY_TRUST_UIDS")):
        return
    if gid is not None and gid in _trusted_ids("ZEROCOPY_TRUST_GIDS"):
        return
    who = (f"uid {uid} (gid {gid})" if uid is not None
           else "an unknown user (published before zerocopyd recorded publishers)")
    raise PermissionDeniedError(
        f"model '{ref}' ({info.get('digest', '?')}) was published by {who}, and its {what} would run code of "
        f"theirs in this process (uid {os.geteuid()}); load only its weights (ray_zerocopy.load_state_dict, "
        f"or from_store(name, model=factory)), load it by digest if you trust those bytes, or trust its publisher: "
        f"ZEROCOPY_TRUST_UIDS={uid if uid is not None else 'UID'}", "PERMISSION_DENIED")


def load(ref: str, socket: str | None = None, read_only: bool = False, device=None, segment_path=None):
    """Maps model `ref` (name or digest) and rebuilds the object published
    with publish(); its tensors are views of the mapping (of the shared
    device copy for a CUDA `device`). `segment_path`: see _map."""
    mapping = _map(ref, socket, read_only=read_only, device=device, segment_path=segment_path)
    metadata = mapping.metadata
    if is_skeleton(metadata):
        if not _DIGEST.fullmatch(ref):  # by digest it always runs: not even the info (a dict made per call) is read
            check_publisher(ref, mapping.info, "pickled skeleton")
    else:
        raise InvalidModelError(
            f"model {mapping.digest} ({mapping.format}) holds weights only, no Python object: load it with "
            "ray_zerocopy.load_state_dict(), or ModelWrapper.from_store(name, model=factory)", "INVALID_ARGUMENT")
    return unpickle(mapping, memoryview(metadata)[len(MAGIC):])  # both versions' lines are this long


def unpickle(mapping, data):
    """The object a skeleton pickler pickled, its references resolved to
    tensors and storages over `mapping`."""
    # Tensors over our storages need none of what torch's rebuild probes for
    # per tensor (a fake mode, under which it rebuilds as torch does).
    fast = not _fake_mode_possible() or torch._guards.detect_fake_mode(None) is None
    tensors = None  # made with the collector off, below

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            kind = pid[0]
            if kind == "tensor":  # a manifest tensor (publish's persistent_id)
                _, index, requires_grad, k = pid
                if not 0 <= index < len(tensors.plan):
                    raise pickle.UnpicklingError(f"tensor {index} of a model of {len(tensors.plan)}")
                if fast:
                    return tensors.tensor(index, k, requires_grad)
                made = tensors.made.get((index, k))  # one object stays one, under a fake mode too
                if made is None:
                    offset, shape, strides, dtype, s = tensors.geometry(index)
                    typed = torch.storage.TypedStorage(wrap_storage=tensors.storage(s), dtype=dtype, _internal=True)
                    made = tensors.made[(index, k)] = torch._utils._rebuild_tensor_v2(
                        typed, offset, shape, strides, requires_grad, collections.OrderedDict())
                return made
            if kind == "bytes":  # a storage of the object's own, its bytes inline (_cache.put)
                _, code, device, data = pid
                storage = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
                           else torch.empty(0, dtype=torch.uint8)).to(device).untyped_storage()
                return storage if code == "U8" else torch.storage.TypedStorage(
                    wrap_storage=storage, dtype=_TORCH_DTYPES[code], _internal=True)
            if kind != "storage":
                raise pickle.UnpicklingError(f"unknown reference {kind!r}")
            _, index, code = pid
            return torch.storage.TypedStorage(wrap_storage=tensors.storage(index), dtype=_TORCH_DTYPES[code],
                                              _internal=True)

        def find_class(self, module, name):
            if fast and module == "torch._utils":
                if name == "_rebuild_tensor_v2":
                    return _rebuild_mapped_tensor
                if name == "_rebuild_parameter":
                    return _rebuild_mapped_parameter
                if name == "_rebuild_parameter_with_state":
                    return _rebuild_mapped_parameter_with_state
            return super().find_class(module, name)

    with _no_gc():
        tensors = _MappedTensors(mapping)
        return Unpickler(io.BytesIO(data)).load()


class _MappedTensors:
    """A mapping's storages and manifest tensors as torch objects, each made
    once and only when the skeleton asks: a tensor alone on its storage is
    the DLPack import of the mapping's own capsule for it (one call makes
    tensor and storage); the others are carved from their storage. Storages
    are shared by everything over them, as they were when published. What
    only a second object over a view needs (its geometry, its storage's
    object) is read from the imported tensor when asked, not per import."""

    def __init__(self, mapping):
        self.mapping = mapping
        self.plan = mapping.tensor_plan()
        self.storages: dict = {}  # storage index -> UntypedStorage
        self.owners: dict = {}  # storage index -> the tensor that imported it whole (alone on it)
        self.geometries: dict = {}  # tensor index -> (offset in elements, shape, strides, dtype, storage)
        self.made: dict = {}  # (tensor index, object ordinal) -> tensor

    def storage(self, s: int) -> torch.UntypedStorage:
        storage = self.storages.get(s)
        if storage is None:
            owner = self.owners.get(s)
            storage = self.storages[s] = owner.untyped_storage() if owner is not None else _storage(self.mapping, s)
        return storage

    def geometry(self, i: int) -> tuple:
        g = self.geometries.get(i)
        if g is None:
            name, s, byte_offset, code, shape, strides, whole = self.plan[i]
            dtype = _TORCH_DTYPES.get(code)
            if dtype is None:
                raise InvalidModelError(f"tensor '{name}' has dtype {code}, which this torch lacks",
                                        "INVALID_ARGUMENT")
            t = self.owners.get(s)  # tensor i itself, when it was imported whole: nothing else is on s
            if t is None and whole is not None:  # the capsule carries the shape: import it
                t = self._import(i)
            if t is not None:  # its storage is the whole storage
                g = (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, s)
            else:
                g = (byte_offset // dtype.itemsize, shape, strides or _contiguous_strides(shape), dtype, s)
            self.geometries[i] = g
        return g

    def _import(self, i: int) -> torch.Tensor:
        """The whole capsule of tensor i, imported once."""
        s, whole = self.plan[i][1], self.plan[i][6]
        self.plan[i] = self.plan[i][:6] + (None,)  # a capsule is consumed by its import
        t = self.owners[s] = _from_dlpack(whole)
        return t

    def tensor(self, i: int, k: int, requires_grad: bool) -> torch.Tensor:
        t = self.made.get((i, k))
        if t is not None:
            return t
        s, whole = self.plan[i][1], self.plan[i][6]
        if whole is not None and s not in self.storages:
            t = self._import(i)
            if k != 0:  # another object over the same view: a tensor of its own
                t = self._carve(i)
        else:
            t = self._carve(i)
        if requires_grad:
            t.requires_grad_(True)
        self.made[(i, k)] = t
        return t

    def _carve(self, i: int) -> torch.Tensor:
        offset, shape, strides, dtype, s = self.geometry(i)
        storage = self.storage(s)
        return torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, shape, strides)


def _rebuild_mapped_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2 for a tensor over a mapped storage:
    the same tensor, without its per-tensor probe for a fake mode (load
    checks once)."""
    t = torch.empty((0,), dtype=storage.dtype, device=storage._untyped_storage.device)
    t.set_(storage._untyped_storage, storage_offset, size, stride)
    t.requires_grad = requires_grad
    if metadata:
        torch._utils.set_tensor_metadata(t, metadata)
    t._backward_hooks = backward_hooks  # as torch: for backwards compatibility, an empty OrderedDict
    return t


def _rebuild_mapped_parameter(data, requires_grad, backward_hooks):
    """torch._utils._rebuild_parameter for a parameter over a mapped tensor:
    what nn.Parameter makes of a plain tensor, without its Python __new__,
    and without installing the empty hook dict every pickled parameter
    carries (torch never pickles hooks: setting even an empty one gives the
    tensor autograd metadata and a hook to run). Hooks, if a pickle holds
    any, are set as torch sets them."""
    if type(data) is torch.Tensor:
        param = torch.Tensor._make_subclass(torch.nn.Parameter, data, requires_grad)
    else:
        param = torch.nn.Parameter(data, requires_grad)
    if backward_hooks:
        param._backward_hooks = backward_hooks
    return param


def _rebuild_mapped_parameter_with_state(data, requires_grad, backward_hooks, state):
    """torch._utils._rebuild_parameter_with_state (a parameter with
    attributes of its own, which transformers gives its parameters) as
    _rebuild_mapped_parameter."""
    param = _rebuild_mapped_parameter(data, requires_grad, backward_hooks)
    return torch._utils._set_obj_state(param, state)


def load_state_dict(ref: str, socket: str | None = None, read_only: bool = False, populate: bool = False,
                    device=None, segment_path=None) -> dict:
    """The model's tensors by name, as views of its mapping: zero-copy, tied
    tensors sharing one storage. Works for every model, whoever published it.
    populate=True faults every page in now (MAP_POPULATE) rather than on
    first touch. A CUDA `device`: views of the shared device copy."""
    mapping = _map(ref, socket, read_only=read_only, populate=populate, device=device, segment_path=segment_path)
    with _no_gc():
        return _state_dict(mapping)


def _state_dict(mapping) -> dict:
    # Its own loop, not _MappedTensors: a state dict makes every tensor, and
    # at 10,000 tensors the per-tensor method calls would cost ~1 µs each.
    cache: dict = {}
    out = {}
    for name, s, byte_offset, code, shape, strides, whole in mapping.tensor_plan():
        if whole is not None:  # alone on its storage: the tensor is the DLPack import itself
            out[name] = _from_dlpack(whole)
            continue
        if s not in cache:
            cache[s] = _storage(mapping, s)
        dtype = _TORCH_DTYPES.get(code)
        if dtype is None:
            raise InvalidModelError(f"tensor '{name}' has dtype {code}, which this torch lacks", "INVALID_ARGUMENT")
        t = torch.empty(0, dtype=dtype, device=cache[s].device)
        t.set_(cache[s], byte_offset // dtype.itemsize, shape, strides or _contiguous_strides(shape))
        out[name] = t
    return out


def _contiguous_strides(shape) -> tuple:
    """torch's strides of a contiguous tensor of `shape` (a dimension of 0
    or 1 elements counts as 1)."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


JIT_MAGIC = b"zerocopy-torchscript/1\n"


def _owner(module, path: str):
    *parents, leaf = path.split(".")
    for p in parents:
        module = getattr(module, p)
    return module, leaf


def publish_jit(module, name: str = "", pin: bool = False, socket: str | None = None) -> dict:
    """Publishes a TorchScript module: its parameters and buffers go into the
    segment, its code into the metadata as an archive saved with every such
    tensor swapped for an empty one (no weight bytes)."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise InvalidModelError(f"expected a TorchScript module (torch.jit.script/trace), got {type(module).__name__}",
                                "INVALID_ARGUMENT")
    named = list(module.named_parameters()) + list(module.named_buffers())
    storages = _Storages()
    tensors = []
    for tname, t in named:
        s = storages.add(t.untyped_storage())
        tensors.append((tname, s, t.storage_offset() * t.element_size(), dtype_code(t.dtype),
                        list(t.shape), list(t.stride())))
    swapped = []
    try:
        for tname, t in named:
            owner, leaf = _owner(module, tname)
            owner._c.setattr(leaf, torch.empty(0, dtype=t.dtype))
            swapped.append((owner, leaf, t))
        archive = io.BytesIO()
        torch.jit.save(module, archive)
    finally:
        for owner, leaf, t in reversed(swapped):
            owner._c.setattr(leaf, t)
    regions = [(s.data_ptr(), s.nbytes()) for s in storages.host]
    info = _native.client(socket).publish(regions, tensors, JIT_MAGIC + archive.getvalue(), "torchscript", name, pin)
    _cluster.register(info["digest"], name, socket)
    return info


def load_jit(ref: str, socket: str | None = None, device=None, segment_path=None):
    """Loads a TorchScript model published with publish_jit(): the code from
    the archive, every parameter and buffer a view of the mapping (of the
    shared device copy for a CUDA `device`). `segment_path`: see _map."""
    mapping = _map(ref, socket, segment_path=segment_path)
    metadata = mapping.metadata
    check_publisher(ref, mapping.info, "TorchScript archive")
    if not metadata.startswith(JIT_MAGIC):
        raise InvalidModelError(f"model {mapping.digest} ({mapping.format}) is not a TorchScript model",
                                "INVALID_ARGUMENT")
    gpu = gpu_device(device)
    state = load_state_dict(mapping.digest, socket, device=gpu, segment_path=segment_path)
    module = torch.jit.load(io.BytesIO(metadata[len(JIT_MAGIC):]), map_location=gpu or "cpu")
    for tname, t in state.items():
        owner, leaf = _owner(module, tname)
        owner._c.setattr(leaf, t)
    return module
