"""torch.export programs: an ExportedProgram preloaded once per node, the
program with every weight and constant mapped zero-copy in every process.

A ``torch.export.save`` archive (.pt2) is preloaded as one model
(formats/pt2_archive.h): its weights and tensor constants become the
model's tensors (tied weights stay one storage), and the rest of the
archive (the program's JSON, the weights' and constants' configs, the
sample inputs) is kept with the model as files, covered by its digest and
pulled with it to other nodes. Preloading parses the archive's JSON only;
nothing in it runs.

``load_exported`` rebuilds the ExportedProgram with torch's own
deserializer from the stored program and configs, handing it the mapped
tensors as its state dict and constants, so ``ep.module()``'s parameters,
buffers and constants are views of the one shared copy. What torch does
slowly before the program runs is done once per node and user: the node's
first process of a user keeps the ExportedProgram it built in the user's
cache (_cache.py), pickled over the mapping (_reduce), and the next ones
unpickle it; a program with symbolic shapes (torch's shape environment
is state, not data) keeps its JSON read into torch's schema objects
instead. The graph's static tensor metadata are made directly rather than
by dispatch.
"""
from __future__ import annotations

import copyreg
import dataclasses
import functools
import importlib
import io
import json
import os
import pickle
import sys
import tempfile
import threading
import types
import typing

import torch

from . import _cache, _cluster, _native, _store
from .errors import FailedPreconditionError, InvalidModelError

FORMAT = "torch-export"


def preload_exported(program, name: str = "", pin: bool = False, socket: str | None = None) -> dict:
    """Preloads an ExportedProgram into this node's zerocopyd as model
    `name`: `program` is a ``torch.export.save`` archive's path, or an
    ExportedProgram (saved to a temporary archive first). Inside a Ray
    cluster the model is registered in the cluster's directory, so other
    nodes pull it on first use. Returns the model's info (digest, size,
    ...). Same as ``zerocopy preload m.pt2 --name NAME``."""
    if isinstance(program, torch.export.ExportedProgram):
        with tempfile.TemporaryDirectory(prefix="zerocopy-export-") as d:
            path = os.path.join(d, "program.pt2")
            torch.export.save(program, path)
            info = _native.client(socket).preload(path, FORMAT, name, pin)
    else:
        info = _native.client(socket).preload(os.fspath(program), FORMAT, name, pin)
    _cluster.register(info["digest"], name, socket)
    return info


def _open(ref: str, socket, fmt: str, what: str, kind: str):
    """The host mapping of model `ref` and its files, once its publisher is
    trusted to run `what` in this process (loaded by name) and it is a
    model of format `fmt` (`kind` says what that is)."""
    host = _store._map(ref, socket)
    _store.check_publisher(ref, host.info, what)
    if host.format != fmt:
        raise InvalidModelError(f"model {ref!r} is {host.format!r}, not {kind} ({fmt!r})", "INVALID_ARGUMENT")
    return host, host.files()


def _program_name(files: dict, ref: str) -> str:
    programs = [n[len("models/"):-len(".json")] for n in files if n.startswith("models/") and n.endswith(".json")]
    if len(programs) != 1:
        raise InvalidModelError(f"model {ref!r} keeps {len(programs)} programs; a torch.export archive has one",
                                "INVALID_ARGUMENT")
    return programs[0]


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    from torch._export.serde import schema
    return typing.get_type_hints(cls, globalns=vars(schema))


def _to_dataclass(cls, data):
    """torch's ``_dict_to_dataclass`` (torch/_export/serde/serialize.py:
    the program's JSON into its schema dataclasses, keys the schema lacks
    ignored), with each class's type hints worked out once rather than at
    every object: torch's own spends 0.27 of a 256 MiB program's 0.35 s
    there (typing.get_type_hints, 2,700 calls)."""
    from torch._export.serde.serialize import _resolve_schema_cls
    from torch._export.serde.union import _Union
    cls = _resolve_schema_cls(cls)
    if isinstance(cls, str):
        raise AssertionError(f"Unresolved class type: '{cls}'.")
    origin = typing.get_origin(cls)
    if origin is typing.Annotated:
        return _to_dataclass(cls.__origin__, data)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
        if data is None:
            return None
        args = typing.get_args(cls)
        if len(args) != 2:
            raise AssertionError(f"expected 2 type args, got {len(args)}")
        return _to_dataclass(args[0], data)
    if isinstance(cls, type) and issubclass(cls, _Union):
        if not isinstance(data, dict) or len(data) != 1:
            raise AssertionError(f"expected a dict of one key for {cls.__name__}, got {data!r:.80}")
        (kind, value), = data.items()
        return cls.create(**{kind: _to_dataclass(_hints(cls)[kind], value)})
    if dataclasses.is_dataclass(cls):
        hints = _hints(cls)
        return cls(**{f.name: _to_dataclass(hints[f.name], data[f.name])
                      for f in dataclasses.fields(cls) if f.name in data})
    if isinstance(data, list):
        if not data:
            return data
        item = typing.get_args(cls)[0]
        return [_to_dataclass(item, d) for d in data]
    if isinstance(data, dict):
        value = typing.get_args(cls)[1]
        return {k: _to_dataclass(value, v) for k, v in data.items()}
    if cls is float:
        return float(data)
    return data


def _payload_config(files: dict, path: str):
    from torch._export.serde import schema
    if path not in files:
        return {}
    return _to_dataclass(schema.PayloadConfig, json.loads(files[path])).config


def _saved_device(files: dict, name: str, ref: str) -> torch.device | None:
    """The device the archive's tensors were saved on (torch.export.load
    puts them there), read from the weights' and constants' configs' JSON
    as it is (a few hundred bytes a tensor): None for the host."""
    try:
        for kind in ("weights", "constants"):
            path = f"data/{kind}/{name}_{kind}_config.json"
            for payload in json.loads(files[path])["config"].values() if path in files else ():
                device = (payload.get("tensor_meta") or {}).get("device") or {"type": "cpu"}
                if device["type"] != "cpu":
                    return torch.device(device["type"], device.get("index"))
    except Exception as e:  # not the configs torch writes
        raise _unreadable(ref, e) from None
    return None


def _sample_inputs(blob: bytes | None):
    """The archive's sample inputs, read as plain data only: torch.load
    with weights_only=True, and kept only when the result has the shape
    torch saves ((args tuple, kwargs dict)). Anything else is left out
    (None): torch's own deserializer, handed bytes, would retry them with
    weights_only=False, which runs the pickle's code."""
    if not blob:
        return None
    try:
        value = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:
        return None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], dict):
        return value
    return None


def _unreadable(ref: str, e: Exception) -> InvalidModelError:
    """What load_exported raises when this torch cannot read the program."""
    return InvalidModelError(f"model {ref!r}: this torch ({torch.__version__}) cannot read its program: "
                             f"{type(e).__name__}: {e}", "INVALID_ARGUMENT")


def _parsed(host, files: dict, name: str, ref: str) -> tuple:
    """The archive's program, weights' and constants' configs (torch's
    schema dataclasses, from their JSON) and sample inputs; and whether
    they came from the cache. Parsed by the node's first process of this
    user; kept (by load_exported) for the next ones when the program itself
    cannot be kept: the JSON of a 256 MiB program's 124 nodes takes ~30 ms
    to turn into dataclasses, its pickle ~7 ms to read."""
    from torch._export.serde import schema
    kept = _cache.get(host, _parse_recipe(name))
    if (isinstance(kept, tuple) and len(kept) == 4 and isinstance(kept[0], schema.ExportedProgram)
            and isinstance(kept[1], dict) and isinstance(kept[2], dict)):
        return kept, True
    try:
        return (_to_dataclass(schema.ExportedProgram, json.loads(files[f"models/{name}.json"])),
                _payload_config(files, f"data/weights/{name}_weights_config.json"),
                _payload_config(files, f"data/constants/{name}_constants_config.json"),
                _sample_inputs(files.get(f"data/sample_inputs/{name}.pt"))), False
    except Exception as e:  # a schema this torch does not know
        raise _unreadable(ref, e) from None


def _parse_recipe(name: str) -> tuple:
    return ("torch.export archive", _PARSED_LAYOUT, name)


def _program_recipe(name: str, target) -> tuple:
    return ("torch.export program", _KEPT_LAYOUT, name, str(target))


# What _parsed keeps: (program, weights' config, constants' config, sample
# inputs); how a kept ExportedProgram is pickled (_reduce). Another layout,
# another number (another file in the cache).
_PARSED_LAYOUT = 1
_KEPT_LAYOUT = 3


def _reduce(o):
    """How a kept ExportedProgram pickles what pickle cannot take as it is,
    or not well: a graph module (its class is made per instance) by its
    state and the globals its code names, its code compiled again (one
    whose graph does not compile is not kept); a graph as the list of its
    nodes, a node set without torch's per-field checks; a module (a
    global) and an operator by its name
    (torch's one object; an OpOverload with its schema, checked when
    read); a FakeTensor of
    static shape as one over a meta tensor (as _deserialize makes it), in
    one fake mode of the settings the original had. Refuses symbolic
    shapes (a program with dynamic dimensions is not kept: its shape
    environment is torch's state, not data)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    if isinstance(o, torch.fx.GraphModule):
        code = o._graph.python_code(root_module="self")
        try:  # torch keeps a graph module whose code does not compile uncompiled (a custom object in it)
            compile(code.src, "<graph>", "exec", dont_inherit=True)
        except SyntaxError:
            raise _NotKept("a graph whose code does not compile") from None
        base = next(t for t in type(o).__mro__ if t.__qualname__.split(".")[-1] != "GraphModuleImpl")
        # The names its code refers to, kept where the code is the one its
        # graph makes and they pickle by name: its recompile on load then
        # need not make the code again (_set_graph_module).
        made = (code.src == o._code and code._lineno_map == o._lineno_map
                and code._prologue_start == o._prologue_start and all(map(_by_name, code.globals.values())))
        state = (dict(vars(o)), o._graph._owning_module is o, code.globals if made else None)
        return _new_graph_module, (base, type(o).__name__), state, None, None, _set_graph_module
    if _importable(o):  # a name in a graph module's code
        return importlib.import_module, (o.__name__,)
    if isinstance(o, torch.fx.Graph):
        # Its nodes as a list in order, each without its ring links and
        # users (made again by _set_graph): pickled as a chain, they would
        # recurse once per node. Its owning module is set by that module
        # (_set_graph_module): no cycle between the two.
        if o._owning_module is not None and o._owning_module.__dict__.get("_graph") is not o:
            raise _NotKept("a graph owned by a module that does not hold it")
        nodes = [o._root, *o.nodes]
        index = {n: i for i, n in enumerate(nodes)}
        users = [[index[u] for u in n.users] for n in nodes]
        state = (nodes, users, dict(vars(o), _owning_module=None))
        return copyreg.__newobj__, (type(o),), state, None, None, _set_graph
    if isinstance(o, torch.fx.Node):  # an erased one (not in the list) whole: its links lead back into the list
        state = o.__getstate__()
        if not o._erased:
            state = {k: v for k, v in state.items() if k not in ("_prev", "_next", "users")}
        return copyreg.__newobj__, (type(o),), state, None, None, _set_node
    if isinstance(o, torch._ops.OpOverload):  # with its schema: a custom op changed since is not this one
        return _operator, (o.namespace, o._opname, o._overloadname, str(o._schema))
    if isinstance(o, torch._ops.OpOverloadPacket):
        return _operator, (*o._qualified_op_name.split("::"), None, None)
    if isinstance(o, torch._ops.HigherOrderOperator):
        return _operator, (o.namespace, o.name(), None, None)
    if isinstance(o, FakeTensor):
        if not all(type(d) is int for d in (*o.shape, *o.stride(), o.storage_offset())) or o.storage_offset():
            raise _NotKept("a symbolic shape, or a view (torch's deserializer makes neither)")
        return _fake_tensor, (o.fake_mode, tuple(o.shape), o.stride(), o.dtype, o.device, o.requires_grad)
    if isinstance(o, FakeTensorMode):  # of a program without symbols: its shape environment holds counters only
        env = o.shape_env
        return _fake_mode, (o.allow_fallback_kernels, o.allow_non_fake_inputs, env is not None and (
            env.assume_static_by_default, env.unbacked_symint_counter, env.unbacked_symfloat_counter))
    if isinstance(o, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        raise _NotKept("a symbolic value")
    return NotImplemented


class _NotKept(Exception):
    pass


def _new_graph_module(base, name):
    gm = base.__new__(base)  # torch's __new__: the instance's own class
    type(gm).__name__ = name
    return gm


def _by_name(value) -> bool:
    """Whether a graph module's global pickles as the same object: a module
    (by name, _reduce), a plain value, or a class or function found again
    by its name."""
    if isinstance(value, types.ModuleType):
        return _importable(value)
    if type(value) in (int, float, bool, str, type(None)):
        return True
    try:
        return pickle.loads(pickle.dumps(value)) is value
    except Exception:
        return False


def _importable(o) -> bool:
    """A module that importing its name gives back (not __main__, which is
    another one in another process)."""
    return (isinstance(o, types.ModuleType) and o.__name__ != "__main__"
            and sys.modules.get(o.__name__) is o)


def _set_graph_module(gm, state):
    attributes, owns_graph, code_globals = state
    gm.__dict__.update(attributes)
    if owns_graph:
        gm._graph.owning_module = gm
    from torch.fx.experimental import _config
    if code_globals is not None and not _config.enrich_profiler_metadata:  # (which changes the code recompile makes)
        # torch's recompile, handed the code its graph made when kept (the
        # same graph, torch and layout: the same code) rather than making it
        # again (~1 ms of a 256 MiB program's 2.5): the graph's python_code
        # answers with it for the length of the call.
        from torch.fx.graph import PythonCode
        graph = gm._graph
        graph.python_code = lambda *_, **__: PythonCode(src=gm._code, globals=code_globals,
                                                        _lineno_map=gm._lineno_map, _prologue_start=gm._prologue_start)
        try:
            gm.recompile()
            return
        except Exception:  # another torch's recompile or PythonCode: made its own way below
            pass
        finally:
            del graph.python_code
    gm.recompile()  # its forward, from its graph


def _set_node(node, state):
    # What torch's Node.__setstate__ does, setattr per field, without
    # Node.__setattr__'s look-ups (~1.5 ms of a 256 MiB program's 7): they
    # only matter for a node already in a graph's find_nodes table or with a
    # name, and this one, just made and its graph not yet set, has neither.
    for k, v in state.items():
        object.__setattr__(node, k, v)


def _set_graph(graph, state):
    nodes, users, rest = state
    for i, node in enumerate(nodes):  # the root, then the graph's nodes: a ring
        node._prev, node._next = nodes[i - 1], nodes[(i + 1) % len(nodes)]
        node.users = {nodes[j]: None for j in users[i]}
    graph.__dict__.update(rest)


def _operator(namespace, name, overload, schema):
    packet = getattr(getattr(torch.ops, namespace), name)
    op = packet if overload is None else getattr(packet, overload)
    if schema is not None and str(op._schema) != schema:
        raise pickle.UnpicklingError(f"operator {op} is now {op._schema}, not {schema}")
    return op


def _fake_tensor(mode, shape, stride, dtype, device, requires_grad):
    """A static-shape FakeTensor in `mode`, over a meta tensor (what torch
    makes by dispatching empty_strided under the mode, made directly):
    for _deserialize and for a kept program's unpickling."""
    from torch._subclasses.fake_tensor import FakeTensor
    return FakeTensor(mode, torch.empty_strided(shape, stride, dtype=dtype, device="meta", requires_grad=requires_grad),
                      device)


def _fake_mode(allow_fallback_kernels, allow_non_fake_inputs, shape_env):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    env = None
    if shape_env:
        env = ShapeEnv(assume_static_by_default=shape_env[0])
        env.unbacked_symint_counter, env.unbacked_symfloat_counter = shape_env[1:]
    return FakeTensorMode(allow_fallback_kernels=allow_fallback_kernels, allow_non_fake_inputs=allow_non_fake_inputs,
                          shape_env=env)


# torch's deserializer takes one program at a time per process (it keeps
# the one it is reading in a module global and refuses a second): loads in
# several threads take turns.
_DESERIALIZING = threading.Lock()


@functools.lru_cache(maxsize=None)
def _deserialize():
    """torch's ExportedProgramDeserializer().deserialize, its graph read by
    a GraphModuleDeserializer that makes a static-shape tensor's metadata
    (a FakeTensor over a meta tensor) directly rather than by dispatching
    empty_strided under the fake mode: the same tensor in ~15 us rather
    than ~250 us (30 ms of a 256 MiB program's 50 ms in torch's
    deserializer). Symbolic shapes go through torch's own. torch's classes
    take no subclasses: its deserialize() runs as it is, with the one name
    it looks up, GraphModuleDeserializer, made by the function below."""
    from torch._export.serde import serialize

    def tensor_meta(graph, tensor_meta):
        sizes, strides = tensor_meta.sizes, tensor_meta.strides
        if any(s.type != "as_int" for s in sizes) or any(s.type != "as_int" for s in strides):
            return serialize.GraphModuleDeserializer.deserialize_tensor_meta(graph, tensor_meta)
        return _fake_tensor(graph.fake_tensor_mode, [s.as_int for s in sizes], [s.as_int for s in strides],
                            serialize._SERIALIZE_TO_TORCH_DTYPE[tensor_meta.dtype],
                            serialize.deserialize_device(tensor_meta.device), tensor_meta.requires_grad)

    def graph_deserializer():
        graph = serialize.GraphModuleDeserializer()
        graph.deserialize_tensor_meta = types.MethodType(tensor_meta, graph)
        return graph

    base = serialize.ExportedProgramDeserializer.deserialize
    if not _fast_path_fits(serialize, base):  # another torch: its own deserializer, as it is
        return serialize.ExportedProgramDeserializer().deserialize
    deserialize = types.FunctionType(base.__code__, dict(vars(serialize), GraphModuleDeserializer=graph_deserializer),
                                     base.__name__, base.__defaults__, base.__closure__)
    deserialize.__kwdefaults__ = base.__kwdefaults__
    return types.MethodType(deserialize, serialize.ExportedProgramDeserializer())


def _fast_path_fits(serialize, base) -> bool:
    """Whether this torch has what _deserialize builds on: its deserialize()
    looks up GraphModuleDeserializer by name and sets no module global (its
    copy runs over a copy of the module's globals), the graph deserializer
    reads a tensor's metadata with deserialize_tensor_meta(tensor_meta),
    and the helpers the fast path calls exist."""
    import dis
    import inspect

    def sets_globals(code) -> bool:
        return (any(i.opname in ("STORE_GLOBAL", "DELETE_GLOBAL") for i in dis.get_instructions(code))
                or any(sets_globals(c) for c in code.co_consts if isinstance(c, types.CodeType)))

    method = getattr(serialize.GraphModuleDeserializer, "deserialize_tensor_meta", None)
    return ("GraphModuleDeserializer" in base.__code__.co_names and not sets_globals(base.__code__)
            and method is not None and list(inspect.signature(method).parameters) == ["self", "tensor_meta"]
            and hasattr(serialize, "_SERIALIZE_TO_TORCH_DTYPE") and hasattr(serialize, "deserialize_device"))


def load_exported(ref: str, device=None, socket: str | None = None):
    """The ExportedProgram stored as `ref` (a name or digest, preloaded from
    a ``torch.export.save`` archive), rebuilt by torch's deserializer with
    every weight, buffer and tensor constant a view of the node's one
    shared copy (by the node's first process of this user; the next ones
    unpickle the program it kept, over their own mapping, where it has
    static shapes, and otherwise its parsed JSON):
    ``load_exported(ref).module()`` runs as
    ``torch.export.load(path).module()`` does, holding no copy of its own.
    Parameters have ``requires_grad=False`` (inference); a write to a
    weight copies the pages it touches into this process (the mapping is
    copy-on-write), never into the shared copy.

    `device`: where the tensors live: None (default) for where the archive
    says they were saved (as torch.export.load does), "cpu", or "cuda:N"
    for views of that GPU's one shared copy. Sample inputs are kept where
    they are plain tensors (torch.load with weights_only=True), left out
    otherwise: nothing from the archive runs. Inside Ray, a model this node
    lacks is pulled from another node first.

    The program decides what runs in this process: loaded by name, it must
    come from a publisher this process trusts, as a pickled skeleton or a
    TorchScript archive must (SECURITY.md; by digest it always loads).

    Raises ModelNotFoundError, PermissionDeniedError (an untrusted
    publisher), or InvalidModelError for a model that is not a torch.export
    program or that this torch cannot read (the program's schema version,
    an operator it lacks)."""
    host, files = _open(ref, socket, FORMAT, "torch.export program",
                        "a torch.export program (preload a torch.export.save archive)")
    name = _program_name(files, ref)
    # The parse, the tensors and the graph make tens of thousands of objects:
    # a collection of all torch's on the way costs ~0.1 s (_store._no_gc).
    with _store._no_gc():
        target = _store.gpu_device(device) if device is not None else _saved_device(files, name, ref)
        mapping = host if target is None else _store._map(host.digest, socket, device=target)
        kept = _cache.get(mapping, _program_recipe(name, target))
        if isinstance(kept, torch.export.ExportedProgram):
            return kept
        parsed, parse_kept = _parsed(host, files, name, ref)
        program, weights, constants, sample_inputs = parsed
        tensors = _store._state_dict(mapping)
        state_dict = {}
        for fqn, payload in weights.items():
            t = tensors[fqn]
            state_dict[fqn] = torch.nn.Parameter(t, requires_grad=False) if payload.is_param else t
        consts = {fqn: tensors[fqn] for fqn in constants}
        try:
            with _DESERIALIZING:
                ep = _deserialize()(program, state_dict, consts, sample_inputs)
        except Exception as e:  # SerializeError, an operator this torch lacks, a schema it cannot read
            raise _unreadable(ref, e) from None
        # The node's next processes of this user: the program itself if it
        # pickles (static shapes), else at least its parse.
        program_kept = not ep.range_constraints and _cache.put(mapping, list(tensors.values()), ep,
                                                               _program_recipe(name, target), _reduce)
        if not program_kept and not parse_kept:
            _cache.put(host, [], parsed, _parse_recipe(name))
    return ep


# -- AOTInductor packages ---------------------------------------------------

AOTI_FORMAT = "aoti"


def _cache_dir() -> str:
    return _cache.directory("ZEROCOPY_AOTI_CACHE", "aoti")


def _complete(path: str, files: dict) -> bool:
    """Every file of the program is there with its size (a cache cleaner
    may have removed some)."""
    for name, data in files.items():
        try:
            if os.lstat(os.path.join(path, name)).st_size != len(data):
                return False
        except OSError:
            return False
    return True


def _program_directory(digest: str, files: dict) -> str:
    """The package's program (every file but the weights) in a directory
    torch's AOTIModelPackageLoader opens: written once per user and model
    under the cache directory, named by the model's digest (which covers
    these files), then reused by every process of that user, in Python and
    in C++ (zerocopy::LoadAotInductor writes and checks the same). The
    cache and the program's directory must be this user's and writable by
    no one else (another user's library is never loaded from a shared
    cache); an incomplete one is moved aside and written again."""
    cache = _cache_dir()
    path = os.path.join(cache, digest)
    if not _cache.made_private(cache):
        raise FailedPreconditionError(f"the AOTInductor program cache {cache} is not a directory of this user "
                                      f"(uid {os.geteuid()}) writable by no one else; set ZEROCOPY_AOTI_CACHE",
                                      "FAILED_PRECONDITION")
    if os.path.lexists(path):
        if _cache.private(path) and _complete(path, files):
            return path
        try:  # moved aside, not removed: a process may be running from it
            os.rename(path, tempfile.mkdtemp(dir=cache, prefix=f".{digest}.stale."))
        except OSError as e:
            raise FailedPreconditionError(f"{path} is not this user's program for model {digest} and cannot be "
                                          f"moved aside: {e}", "FAILED_PRECONDITION") from None
    tmp = tempfile.mkdtemp(dir=cache, prefix=f".{digest}.")
    try:
        for name, data in files.items():
            target = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            with open(target, "xb") as f:
                f.write(data)
        try:
            os.rename(tmp, path)
        except OSError:  # another process wrote it first
            if not (_cache.private(path) and _complete(path, files)):
                raise
    finally:
        if os.path.isdir(tmp):
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _compiled_name(files: dict, ref: str) -> str:
    prefix = "data/aotinductor/"
    models = {n[len(prefix):].split("/")[0] for n in files if n.startswith(prefix) and "/" in n[len(prefix):]}
    if len(models) != 1:
        raise InvalidModelError(f"model {ref!r} keeps {len(models)} compiled models; a package has one",
                                "INVALID_ARGUMENT")
    return models.pop()


def _cpu_has(isa: str) -> bool:
    """Whether this CPU has the instruction set torch's AOTI_CPU_ISA names
    (its vector ISAs' names, upper case); one it names that we cannot ask
    the CPU about counts as lacking."""
    checks = {"AVX2": "_is_avx2_supported", "AVX512": "_is_avx512_supported", "AVX512_VNNI": "_is_vnni_supported",
              "AMX_TILE": "_is_amx_tile_supported"}
    if isa == "INVALID_VEC_ISA":  # compiled without vector instructions
        return True
    check = getattr(torch.cpu, checks.get(isa, ""), None)
    return bool(check()) if check is not None else False


def _check_built_for_here(metadata: dict, ref: str, device_index: int) -> None:
    """torch's loader only warns when a package was compiled for another
    machine; running it can then crash the process (an instruction this CPU
    lacks). Refused here instead, naming the difference. The values
    compared are the ones torch records (codecache.get_device_information),
    read here without its CPU probe (pick_vec_isa: about 60 ms in a fresh
    process, for a value the instruction check below asks the CPU itself)."""
    import platform
    import sys
    device = metadata.get("AOTI_DEVICE_KEY", "cpu")
    here = {"AOTI_PLATFORM": sys.platform, "AOTI_MACHINE": platform.machine()}
    problems = [f"{k} {metadata[k]!r} (this machine: {here[k]!r})" for k in here if metadata.get(k, here[k]) != here[k]]
    if device == "cpu":
        lacking = [i for i in metadata.get("AOTI_CPU_ISA", "").split() if not _cpu_has(i)]
        if lacking:
            problems.append(f"instructions {' '.join(lacking)} that this CPU lacks (or that cannot be checked here)")
    else:
        try:
            from torch._dynamo.device_interface import get_interface_for_device
            index = device_index if device_index >= 0 else torch.cuda.current_device()
            capability = str(get_interface_for_device(device).get_compute_capability(index))
        except Exception as e:  # no CUDA here for a CUDA package
            raise FailedPreconditionError(f"model {ref!r} is compiled for {device}, which this process cannot use: "
                                          f"{type(e).__name__}: {e}", "FAILED_PRECONDITION") from None
        if metadata.get("AOTI_COMPUTE_CAPABILITY", capability) != capability:
            problems.append(f"compute capability {metadata['AOTI_COMPUTE_CAPABILITY']} (this GPU: {capability})")
    if problems:
        raise FailedPreconditionError(f"model {ref!r} was compiled for another machine: {'; '.join(problems)}",
                                      "FAILED_PRECONDITION")


@functools.lru_cache(maxsize=None)
def _runner_class():
    from torch.export.pt2_archive._package import AOTICompiledModel

    class MappedAOTIModel(AOTICompiledModel):
        """torch's AOTICompiledModel that holds the mapped tensors its
        loader computes from (user_managed constants: the loader keeps
        their addresses, not them), copies included."""

        def __init__(self, loader, constants):
            super().__init__(loader)
            self._zerocopy_constants = constants

        def __copy__(self):
            return MappedAOTIModel(self.loader, self._zerocopy_constants)

        def __deepcopy__(self, memo):
            return self.__copy__()  # the same loader, as torch's own copy: the same tensors

    return MappedAOTIModel


def load_aoti(ref: str, device_index: int = -1, socket: str | None = None):
    """The AOTInductor package stored as `ref` (preloaded from
    ``aoti_compile_and_package``'s .pt2, compiled with its weights beside
    the library), loaded by torch's own ``AOTIModelPackageLoader`` with its
    constants pointed at the node's one shared copy (``user_managed``: the
    loader keeps our tensors' addresses, copies nothing). Returns torch's
    ``AOTICompiledModel``, called as ``torch._inductor.aoti_load_package``'s
    is. `device_index`: the GPU of a CUDA package (-1: the current one); a
    CUDA package's constants are views of that GPU's shared copy.

    The package's library is native code of its publisher's: loaded by
    name it must come from a publisher this process trusts (SECURITY.md).
    Its program files (all but the weights) are written once per user to
    ~/.cache/zerocopy/aoti/<digest>/ ($ZEROCOPY_AOTI_CACHE), which the
    loader opens.

    Raises ModelNotFoundError, PermissionDeniedError, InvalidModelError for
    a model that is not an AOTInductor package or that this torch's loader
    refuses, FailedPreconditionError for one compiled for another platform,
    CPU or GPU than this one (torch's loader only warns; running it could
    crash the process)."""
    host, files = _open(ref, socket, AOTI_FORMAT, "AOTInductor library", "an AOTInductor package")
    name = _compiled_name(files, ref)
    try:
        path = _program_directory(host.digest, files)
    except OSError as e:
        raise FailedPreconditionError(f"cannot write the program of model {ref!r} to {_cache_dir()}: {e}",
                                      "FAILED_PRECONDITION") from None
    loader_cls = torch._C._aoti.AOTIModelPackageLoader
    try:
        metadata = loader_cls.load_metadata_from_package(path, name)
    except RuntimeError as e:
        raise InvalidModelError(f"model {ref!r}: torch's AOTInductor loader cannot read it: {e}",
                                "INVALID_ARGUMENT") from None
    _check_built_for_here(metadata, ref, device_index)
    gpu = None
    if metadata.get("AOTI_DEVICE_KEY", "cpu") != "cpu":
        gpu = _store.gpu_device(f"cuda:{device_index}" if device_index >= 0 else "cuda")
    mapping = host if gpu is None else _store._map(host.digest, socket, device=gpu)
    with _store._no_gc():
        tensors = _store._state_dict(mapping)
    weights = json.loads(files[f"data/aotinductor/{name}/weights_config.json"])
    constants = {fqn: tensors[fqn] for fqn in weights}
    try:
        runner = _runner_class()(loader_cls(path, name, False, 1, device_index), constants)
        runner.load_constants(constants, check_full_update=True, user_managed=True)
    except RuntimeError as e:
        raise InvalidModelError(f"model {ref!r}: torch's AOTInductor loader refuses it: {e}",
                                "INVALID_ARGUMENT") from None
    return runner
