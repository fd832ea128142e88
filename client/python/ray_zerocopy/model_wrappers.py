"""ModelWrapper and JITModelWrapper: a model or pipeline published to the
node's zerocopyd, carried around as a small picklable handle, and loaded
zero-copy wherever it is needed.

A pipeline is any object whose attributes hold models (nn.Module, or
TorchScript modules for JITModelWrapper), directly or inside lists, tuples
and dicts, private attributes included. Each distinct model is published
once as its own zerocopy model (a module referenced twice is published
once); the rest of the pipeline travels as a pickle with those models left
out.
"""
import io
import pickle
import warnings
from typing import Any, Generic, TypeVar

import torch

from . import _cluster, _native, _store
from ._task_mode import _RemoteModel, _TaskRunner
from .errors import DaemonUnavailableError, GpuSharingUnavailableError, ModelNotFoundError

T = TypeVar("T")


def _find_models(pipeline, is_model, attr_names=None):
    """{key: module} for the models held by the pipeline's attributes, keys
    like "encoder", "heads[0]", "experts['a']"."""
    found = {}

    def visit(key, value, depth):
        if is_model(value):
            found[key] = value
        elif depth < 3 and isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{key}[{i}]", v, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for k, v in value.items():
                visit(f"{key}[{k!r}]", v, depth + 1)

    for attr, value in vars(pipeline).items():
        if attr_names is None or attr in attr_names:
            visit(attr, value, 0)
    return found


def _public_methods(obj, method_names=None):
    if method_names is not None:
        return list(method_names)
    names = [n for n in dir(type(obj)) if not n.startswith("_") and callable(getattr(type(obj), n, None))]
    if isinstance(obj, torch.nn.Module):
        base = set(dir(torch.nn.Module))
        names = [n for n in names if n not in base or n == "forward"]
    return names


def _entry(info: dict, node, socket=None) -> dict:
    """A model of a wrapper: its digest, size, tensors, the Ray node that
    published it (where other nodes pull it from first; None outside Ray),
    and its segment file in the daemon at `socket` that holds it: a load
    through that same socket maps the file at once, its lease taken in the
    background."""
    return {"digest": info["digest"], "bytes": info["size"], "tensors": info["tensor_count"], "node": node,
            "segment": (socket, info["segment_path"]) if socket and info.get("segment_path") else None}


class _Base(Generic[T]):
    _jit = False
    _publish = staticmethod(_store.publish)
    _load_one = staticmethod(_store.load)

    def __init__(self, models: dict, skeleton: bytes | None, mode: str = "actor", method_names=None):
        self._models = models          # key -> {"digest", "bytes", "tensors"}
        self._skeleton = skeleton      # the pipeline without its models; None: a standalone model
        self._mode = mode
        self._method_names = method_names

    @classmethod
    def _is_model(cls, value) -> bool:
        if cls._jit:
            return isinstance(value, torch.jit.ScriptModule)
        return isinstance(value, torch.nn.Module) and not isinstance(value, torch.jit.ScriptModule)

    @classmethod
    def from_model(cls, model_or_pipeline, mode: str = "actor", model_attr_names=None, method_names=None):
        """Publishes every model of `model_or_pipeline` to the node's zerocopyd
        and returns the wrapper. mode: "actor" (load() gives the model) or
        "task" (load() gives a callable whose calls run as tasks)."""
        if mode not in ("actor", "task"):
            raise ValueError(f"mode must be 'actor' or 'task', not {mode!r}")
        if cls._is_model(model_or_pipeline):
            return cls({"": cls._publish_here(model_or_pipeline)}, None, mode, method_names)
        found = _find_models(model_or_pipeline, cls._is_model, model_attr_names)
        if not found:
            kind = "TorchScript modules" if cls._jit else "torch.nn.Module"
            raise ValueError(f"{type(model_or_pipeline).__name__} holds no {kind} in its attributes")
        by_id, models = {}, {}
        for key, module in found.items():
            if id(module) not in by_id:
                by_id[id(module)] = dict(cls._publish_here(module), key=key)
            entry = by_id[id(module)]
            models[key] = {k: entry[k] for k in ("digest", "bytes", "tensors", "node", "segment")}
        pickler_base = _store._pickle_module().Pickler
        # The public methods of each model: what its task-mode stand-in runs.
        model_methods = {key: _public_methods(module) for key, module in found.items()}

        class Pickler(pickler_base):
            def persistent_id(self, o):
                entry = by_id.get(id(o))
                return ("model", entry["key"]) if entry is not None else None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(model_or_pipeline)
        wrapper = cls(models, buffer.getvalue(), mode, method_names)
        wrapper._methods = _public_methods(model_or_pipeline, method_names)
        wrapper._model_methods = model_methods
        return wrapper

    @classmethod
    def _publish_here(cls, module) -> dict:
        """Publishes `module` to this node's daemon; a driver whose machine
        runs none (ray://) publishes through a Ray task on a cluster node."""
        try:
            return _entry(cls._publish(module), _cluster.node_id(), _native.client().socket)
        except DaemonUnavailableError as e:
            remote = _cluster.publish_remote(cls._publish, module)
            if remote is None:
                raise
            info, node = remote
            warnings.warn(f"no zerocopyd on this machine ({e}); published through a Ray task on node {node}",
                          RuntimeWarning, stacklevel=4)
            return _entry(info, node)

    @classmethod
    def for_tasks(cls, pipeline, method_names=None):
        """The pipeline with each of its models replaced by a stand-in whose
        calls run as tasks that load that model zero-copy (a standalone
        model: a callable whose calls run as tasks), as from_model(pipeline,
        mode="task").load() returns it."""
        return cls.from_model(pipeline, mode="task", method_names=method_names).load()

    @property
    def _is_standalone_module(self) -> bool:
        return self._skeleton is None

    @property
    def _model_info(self) -> dict:
        """Per model attribute ("" for a standalone model): digest, bytes,
        tensors."""
        return {k: dict(v) for k, v in self._models.items()}

    def _fetch(self, key: str, device):
        """Model `key`, its weights views of the host mapping (device None)
        or of the shared copy on a CUDA device."""
        info = self._models[key]
        # The segment file only where it is this process's daemon's: another
        # daemon (another node's, or a second one here) may hold a file of
        # that name that it never leased to us.
        segment = info.get("segment")
        path = segment[1] if segment and segment[0] == _native.client().socket else None
        return self._load_one(info["digest"], device=device, segment_path=path)

    def _fetch_or_pull(self, key: str, device):
        """_fetch, after pulling the model from another node of the Ray
        cluster when this node's daemon lacks it."""
        try:
            return self._fetch(key, device)
        except ModelNotFoundError:
            info = self._models[key]
            if not _cluster.pull(info["digest"], info.get("node"), size=info.get("bytes", 0)):
                raise
        return self._fetch(key, device)

    def _load_model(self, key: str, device, fast: bool, strict: bool = False):
        info = self._models[key]
        gpu = _store.gpu_device(device)
        try:
            try:
                model = self._fetch_or_pull(key, gpu)
            except GpuSharingUnavailableError as e:
                if strict:
                    raise
                warnings.warn(f"no shared copy of model {info['digest'][:12]} on {device} ({e}); this process "
                              "makes a copy of its own (strict=True raises instead)", RuntimeWarning, stacklevel=4)
                gpu = None
                model = self._fetch_or_pull(key, None)
        except ModelNotFoundError as e:
            if _cluster.ray_module() is not None:
                raise  # pull() said which nodes it tried
            raise ModelNotFoundError(
                f"model {info['digest']} ({'attribute ' + repr(key) if key else 'the model'}, {info['bytes']} bytes) "
                f"is not in the zerocopyd of this node (socket {_native.default_socket()}): it was published on "
                "another node or removed; outside Ray nothing can bring it here: publish it here "
                "(ModelWrapper.from_model on this node, or `zerocopy preload`)", "NOT_FOUND") from e
        move = device is not None and str(device) != "cpu" and (gpu is None or _has_cuda_tensors(model))
        if self._jit:
            model.eval()
        else:
            _inference_ready(model)
            if fast:
                _to_plain_tensors(model)
        if move:
            # Parameters and buffers already in the shared copy stay where
            # they are; what the state does not hold (non-persistent
            # buffers a factory made) moves to the device. (A test backend's
            # fake copy is host memory: nothing to move.)
            model = model.to(device)
        return model

    def load(self, _use_fast_load: bool = False, device=None, strict: bool = False):
        """The model or pipeline, its weights mapped from zerocopyd (eval
        mode, requires_grad False). On a CUDA device the weights are the
        GPU's one shared copy (CUDA IPC; shared and writable: never write
        into them); when the daemon cannot share one, a warning and a copy
        of this process's own, or GpuSharingUnavailableError with
        strict=True. In task mode: a callable that runs each call as a
        task."""
        if self._mode == "task":
            return self._load_for_tasks(device or "cpu", _use_fast_load, strict)
        return self._load_local(_use_fast_load, device, strict)

    def _load_for_tasks(self, device="cpu", fast: bool = False, strict: bool = False, executor=None):
        """The pipeline with each model a stand-in that runs its calls as
        tasks (a standalone model: one such stand-in); no weight is loaded
        here."""
        if self._skeleton is None:
            return _TaskRunner(self, device=device, use_fast_load=fast, executor=executor, strict=strict)
        methods = getattr(self, "_model_methods", {})
        return self._rebuild({key: _RemoteModel(self, key, device, fast, strict, executor, methods.get(key))
                              for key in self._models})

    def _load_local(self, fast: bool = False, device=None, strict: bool = False):
        if self._skeleton is None:
            return self._load_model("", device, fast, strict)
        loaded = {}
        by_digest = {}
        for key, info in self._models.items():
            if info["digest"] not in by_digest:
                by_digest[info["digest"]] = self._load_model(key, device, fast, strict)
            loaded[key] = by_digest[info["digest"]]
        return self._rebuild(loaded)

    def _rebuild(self, loaded: dict):
        """The pipeline from its skeleton, model `key` replaced by
        loaded[key]."""
        wrapper = self

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                kind, key = pid
                if kind != "model" or key not in loaded:
                    raise pickle.UnpicklingError(f"unknown model reference {pid!r} in {type(wrapper).__name__}")
                return loaded[key]

        return Unpickler(io.BytesIO(self._skeleton)).load()

    def serialize(self) -> dict[str, Any]:
        """The wrapper as a dict of plain values (the published library's
        keys: skeleton, model_info, is_standalone_module, mode; here the
        skeleton is the pipeline's pickle without its models and model_info
        holds digests); `deserialize(**wrapper.serialize())` rebuilds it."""
        return {"skeleton": self._skeleton, "model_info": self._model_info,
                "is_standalone_module": self._is_standalone_module, "mode": self._mode,
                "method_names": getattr(self, "_methods", None), "factory": getattr(self, "_factory", None),
                "model_methods": getattr(self, "_model_methods", None)}

    @classmethod
    def deserialize(cls, skeleton=None, model_info: dict | None = None, is_standalone_module: bool = False,
                    mode: str = "actor", method_names=None, factory=None, model_methods=None):
        """The wrapper from serialize()'s dict (as keyword arguments)."""
        if model_info is None:
            raise TypeError(f"{cls.__name__}.deserialize takes the keys of serialize(): "
                            f"{cls.__name__}.deserialize(**wrapper.serialize())")
        if is_standalone_module != (skeleton is None):
            raise ValueError("is_standalone_module must be True exactly when there is no skeleton")
        wrapper = cls({k: dict(v) for k, v in model_info.items()}, skeleton, mode)
        if method_names is not None:
            wrapper._methods = list(method_names)
        if factory is not None:
            wrapper._factory = factory
        if model_methods is not None:
            wrapper._model_methods = {k: list(v) for k, v in model_methods.items()}
        return wrapper

    def __repr__(self) -> str:
        models = ", ".join(f"{k or 'model'}={v['digest'][:12]}" for k, v in self._models.items())
        return f"{type(self).__name__}({models}, mode={self._mode!r})"


def _has_cuda_tensors(model) -> bool:
    return any(t.is_cuda for t in model.parameters()) or any(t.is_cuda for t in model.buffers())


_Module = torch.nn.Module
# A __setattr__ of these classes does nothing of its own for `training`.
_PLAIN_SETATTR = (_Module.__setattr__, torch.nn.RNNBase.__setattr__)


def _inference_ready(model: torch.nn.Module) -> None:
    """model.eval() and requires_grad False on every parameter, in one walk
    of the module tree: what eval() and parameters() each do with a
    generator per module and a Python __setattr__ per flag, which was a
    fifth of a load. A tree where some class has its own train(),
    __setattr__ or children(), or whose root has its own eval() or
    parameters(), gets eval() and parameters() themselves, as it would
    have."""
    root = type(model)
    if (root.eval is not _Module.eval or root.parameters is not _Module.parameters
            or root.named_parameters is not _Module.named_parameters):
        return _inference_ready_slowly(model)
    modules, stack, seen = [], [model], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        cls = type(m)
        if (cls.train is not _Module.train or cls.__setattr__ not in _PLAIN_SETATTR
                or cls.children is not _Module.children or cls.named_children is not _Module.named_children):
            return _inference_ready_slowly(model)
        modules.append(m)
        stack.extend(c for c in m._modules.values() if c is not None)
    for m in modules:
        object.__setattr__(m, "training", False)
        for p in m._parameters.values():
            if p is not None:
                p.requires_grad_(False)


def _inference_ready_slowly(model: torch.nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _to_plain_tensors(model: torch.nn.Module) -> None:
    """_use_fast_load: parameters become plain tensor attributes."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                del module._parameters[name]
                setattr(module, name, p.detach())


class ModelWrapper(_Base[T]):
    """Zero-copy sharing of nn.Module models and pipelines of them."""

    @classmethod
    def from_store(cls, name: str, model=None, mode: str = "actor"):
        """A wrapper for a model already in zerocopyd (preloaded with the CLI,
        or published elsewhere). For weights-only models (safetensors files)
        give `model`: a factory that builds the module (e.g. on the meta
        device); load() then assigns the mapped tensors to it."""
        info = _native.client().get(name)
        wrapper = cls({"": _entry(info, _cluster.node_id(), _native.client().socket)}, None, mode)
        if model is None and _store.is_skeleton(info["metadata"]):
            _store.check_publisher(name, info, "pickled skeleton")  # the wrapper loads it by digest from now on
        elif model is None:
            raise ValueError(f"model {name!r} holds weights only ({info['format']}): pass model=factory "
                             "that builds the module")
        else:
            wrapper._factory = model  # reads only tensors: open to every publisher
        return wrapper

    def _fetch(self, key, device):
        factory = getattr(self, "_factory", None)
        if factory is None:
            return super()._fetch(key, device)
        module = factory()
        state = _store.load_state_dict(self._models[key]["digest"], device=device)  # _fetch_or_pull pulls first
        module.load_state_dict(state, assign=True, strict=True)
        return module


class JITModelWrapper(_Base[T]):
    """Zero-copy sharing of TorchScript modules and pipelines of them: the
    code travels as a weight-free archive, the weights as views of the
    mapping."""

    _jit = True
    _publish = staticmethod(_store.publish_jit)
    _load_one = staticmethod(_store.load_jit)

    @classmethod
    def from_store(cls, name: str, mode: str = "actor"):
        info = _native.client().get(name)
        if not info["metadata"].startswith(_store.JIT_MAGIC):
            raise ValueError(f"model {name!r} is not a TorchScript model ({info['format']})")
        _store.check_publisher(name, info, "TorchScript archive")
        return cls({"": _entry(info, _cluster.node_id(), _native.client().socket)}, None, mode)
