"""torch.export programs (formats/pt2_archive.h, ray_zerocopy/_export.py):
real exports made here, saved by torch.export.save, preloaded (the CLI and
preload_exported) and loaded with load_exported against
torch.export.load(path).module() on the same archive."""
import io
import json
import math
import operator
import os
import pickle
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch

import ray_zerocopy
from ray_zerocopy import InvalidModelError

from test_hf import segment_ranges
from test_ray import processes_ready, segment_pss


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)


class ConvNet(torch.nn.Module):  # batch norm: running stats are buffers
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Tied(torch.nn.Module):  # tied weights, buffers of two dtypes, a tensor constant
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16).half())
        self.register_buffer("offset", torch.arange(50))
        self.const = torch.randn(16)

    def forward(self, ids):
        h = self.emb(ids) * self.scale.float() + self.const
        return self.head(h) + self.offset


class Dynamic(torch.nn.Module):  # a dynamic batch and sequence length
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.register_buffer("bias", torch.randn(8))

    def forward(self, x):
        return torch.softmax(self.proj(x) + self.bias, dim=-1).cumsum(1)


class Cond(torch.nn.Module):  # a higher-order operator: its branches are graph modules of their own
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.lin(x).relu(), lambda x: self.lin(x) - 1, (x,))


def make(kind: str):
    torch.manual_seed(0)
    if kind == "mlp":
        return torch.export.export(MLP().eval(), (torch.randn(2, 16),)), [torch.randn(2, 16)]
    if kind == "conv":
        m = ConvNet()
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        return torch.export.export(m.eval(), (torch.randn(2, 3, 8, 8),)), [torch.randn(2, 3, 8, 8)]
    if kind == "tied":
        return torch.export.export(Tied().eval(), (torch.tensor([[1, 2, 3]]),)), [torch.tensor([[4, 5, 6]])]
    if kind == "cond":
        return torch.export.export(Cond().eval(), (torch.randn(2, 4),)), [torch.ones(2, 4), -torch.ones(2, 4)]
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=128)
    ep = torch.export.export(Dynamic().eval(), (torch.randn(2, 5, 8),), dynamic_shapes=({0: batch, 1: seq},))
    return ep, [torch.randn(3, 7, 8), torch.randn(1, 20, 8)]


KINDS = ["mlp", "conv", "tied", "cond", "dynamic"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, daemon):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for kind in KINDS:
        ep, inputs = make(kind)
        path = root / f"{kind}.pt2"
        torch.export.save(ep, path)
        if kind == "tied":
            ray_zerocopy.preload_exported(ep, name=f"ep-{kind}")  # from Python, the program itself
        else:
            p = daemon.run_cli("preload", str(path), "--name", f"ep-{kind}")  # the CLI
            assert p.returncode == 0, p.stderr
        out[kind] = (path, inputs)
    return out


def mapped_tensors(module):
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        yield name, t
    for name, value in vars(module).items():  # constants: plain tensor attributes of the graph module
        if isinstance(value, torch.Tensor):
            yield name, value


def assert_same_program(ours, theirs):
    """The same graph, node for node, with the same metadata values (the
    FakeTensors load_exported makes itself, the symbolic ones torch makes),
    and the same code in the program and in its module."""
    from torch._subclasses.fake_tensor import FakeTensor
    nodes = list(ours.graph.nodes)
    assert [(n.op, n.name, str(n.target)) for n in nodes] == [(n.op, n.name, str(n.target)) for n in theirs.graph.nodes]
    assert [n.name for n in reversed(ours.graph.nodes)] == [n.name for n in reversed(theirs.graph.nodes)]
    assert [n._sort_key for n in nodes] == [n._sort_key for n in theirs.graph.nodes]
    ours.graph.lint()
    assert ours.graph._insert.__self__ is ours.graph._root and ours.graph._len == theirs.graph._len
    for target in {n.target for n in theirs.graph.nodes if n.op == "call_function"}:
        assert [n.name for n in ours.graph.find_nodes(op="call_function", target=target)] == \
            [n.name for n in theirs.graph.find_nodes(op="call_function", target=target)]
    assert [n.name for n in ours.graph.find_nodes(op="placeholder")] == \
        [n.name for n in theirs.graph.find_nodes(op="placeholder")]
    tensors = 0
    for a, b in zip(nodes, theirs.graph.nodes):
        assert a.target is b.target if not isinstance(b.target, str) else a.target == b.target, a.name  # torch's op
        assert [u.name for u in a.users] == [u.name for u in b.users], a.name
        assert [i.name for i in a.all_input_nodes] == [i.name for i in b.all_input_nodes], a.name
        va, vb = a.meta.get("val"), b.meta.get("val")
        assert type(va) is type(vb), a.name
        if isinstance(va, torch.Tensor):
            tensors += 1
            assert isinstance(va, FakeTensor) and va.fake_mode is nodes[0].meta["val"].fake_mode, a.name
            assert (str(va.shape), str(va.stride()), va.dtype, va.device, va.requires_grad) == \
                   (str(vb.shape), str(vb.stride()), vb.dtype, vb.device, vb.requires_grad), a.name
        assert {k: v for k, v in a.meta.items() if k != "val"} == {k: v for k, v in b.meta.items() if k != "val"}
    assert tensors > 0
    assert ours.graph_module.code == theirs.graph_module.code
    assert ours.module().code == theirs.module().code
    assert ours.graph_signature == theirs.graph_signature and ours.module_call_graph == theirs.module_call_graph
    assert ours.verifiers == theirs.verifiers and ours.range_constraints.keys() == theirs.range_constraints.keys()
    assert ours.graph_module.meta == theirs.graph_module.meta and ours._guards_code == theirs._guards_code
    for (name, a), (_, b) in zip(ours.graph_module.named_modules(), theirs.graph_module.named_modules()):
        assert type(a).__name__ == type(b).__name__ and getattr(a, "code", None) == getattr(b, "code", None), name
        if isinstance(b, torch.fx.GraphModule):
            assert (a.graph.owning_module is a) == (b.graph.owning_module is b), name
    assert {k: type(v) for k, v in ours.state_dict.items()} == {k: type(v) for k, v in theirs.state_dict.items()}
    assert ours.constants.keys() == theirs.constants.keys()
    assert all(torch.equal(ours.constants[k], theirs.constants[k]) for k in ours.constants)
    mode, their_mode = nodes[0].meta["val"].fake_mode, next(iter(theirs.graph.nodes)).meta["val"].fake_mode
    assert (mode.allow_fallback_kernels, mode.allow_non_fake_inputs) == \
        (their_mode.allow_fallback_kernels, their_mode.allow_non_fake_inputs)
    env, their_env = mode.shape_env, their_mode.shape_env
    assert (env.settings, env.unbacked_symint_counter, env.unbacked_symfloat_counter) == \
        (their_env.settings, their_env.unbacked_symint_counter, their_env.unbacked_symfloat_counter)
    flat, theirs_flat = torch.utils._pytree.tree_leaves(ours.example_inputs), \
        torch.utils._pytree.tree_leaves(theirs.example_inputs)
    assert len(flat) == len(theirs_flat) and all(torch.equal(x, y) for x, y in zip(flat, theirs_flat))


@pytest.mark.parametrize("kind", KINDS)
def test_load_exported_equals_torch_export_load_and_maps_every_tensor(exported, kind, tmp_path, monkeypatch):
    path, inputs = exported[kind]
    # The node's first process parses and deserializes the program and
    # keeps it (one of static shapes) or its parse (dynamic); the next ones
    # unpickle what it kept, and never parse (nor deserialize a kept program).
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "cache"))
    parsed = ray_zerocopy.load_exported(f"ep-{kind}")
    assert len(list((tmp_path / "cache").glob("*/*.pkl"))) == 1
    export = ray_zerocopy._export
    made = []  # graphs whose code is made
    with monkeypatch.context() as m:
        m.setattr(export, "_to_dataclass", lambda *a: pytest.fail("parsed again"))
        if kind != "dynamic":
            m.setattr(export, "_deserialize", lambda *a: pytest.fail("deserialized again"))
        code = torch.fx.Graph.python_code
        m.setattr(torch.fx.Graph, "python_code", lambda self, *a, **k: made.append(self) or code(self, *a, **k))
        ep = ray_zerocopy.load_exported(f"ep-{kind}")
    if kind != "dynamic":
        # A kept graph module's code is kept with it, not made again; but
        # torch's recompile of a module makes its submodules' again.
        submodules = [m for m in ep.graph_module.modules() if isinstance(m, torch.fx.GraphModule)][1:]
        assert len(made) == len(submodules) and len(submodules) == (2 if kind == "cond" else 0)
    # A kept file of another layout (another version of ours wrote it): read
    # again, kept again.
    recipe = export._parse_recipe("model") if kind == "dynamic" else export._program_recipe("model", None)
    mapping = ray_zerocopy._store._map(f"ep-{kind}", None)
    assert ray_zerocopy._cache.put(mapping, [], ("another", "layout"), recipe)
    again = ray_zerocopy.load_exported(f"ep-{kind}")
    from torch._export.serde import schema
    kept = ray_zerocopy._cache.get(mapping, recipe)
    assert isinstance(kept[0], schema.ExportedProgram) if kind == "dynamic" else \
        isinstance(kept, torch.export.ExportedProgram)
    if kind == "mlp":
        # An operator whose schema changed since (a custom op's library, the
        # same torch): the kept program is not used, and is made again.
        def older_schema(o):
            reduced = export._reduce(o)
            if isinstance(o, torch._ops.OpOverload):
                return reduced[0], (*reduced[1][:3], reduced[1][3].replace("Tensor", "Tensor(a)", 1))
            return reduced
        tensors = list(ray_zerocopy._store._state_dict(mapping).values())
        assert ray_zerocopy._cache.put(mapping, tensors, kept, recipe, older_schema)
        with pytest.raises(pickle.UnpicklingError, match="is now"):
            export._operator("aten", "relu", "default", "aten::relu(Tensor(a) self) -> Tensor")
        deserialized = []
        with monkeypatch.context() as m:
            m.setattr(export, "_deserialize", lambda real=export._deserialize: deserialized.append(1) or real())
            assert_same_program(ray_zerocopy.load_exported("ep-mlp"), torch.export.load(path))
        assert deserialized and isinstance(ray_zerocopy._cache.get(mapping, recipe), torch.export.ExportedProgram)
    # The deserializer's fast path fits this torch (not torch's own, unchanged).
    from torch._export.serde.serialize import ExportedProgramDeserializer
    assert export._deserialize().__func__ is not ExportedProgramDeserializer.deserialize
    theirs = torch.export.load(path)
    assert_same_program(parsed, theirs)
    assert_same_program(ep, theirs)
    assert_same_program(again, theirs)
    assert isinstance(ep, torch.export.ExportedProgram)
    assert set(ep.state_dict) == set(theirs.state_dict) and set(ep.constants) == set(theirs.constants)
    ours_m, theirs_m = ep.module(), theirs.module()
    for x in inputs:  # the dynamic program at two shapes it was not exported with
        with torch.no_grad():
            assert torch.equal(ours_m(x), theirs_m(x))
    # Every weight, buffer and constant of the program and of its module is
    # a view of the model's segment.
    ranges = segment_ranges(ray_zerocopy._native.client().get(f"ep-{kind}")["digest"])
    assert ranges
    tensors = [*ep.state_dict.items(), *ep.constants.items(), *mapped_tensors(ours_m)]
    assert len(tensors) > len(ep.state_dict)
    for name, t in tensors:
        assert any(lo <= t.data_ptr() < hi for lo, hi in ranges), name
    assert not any(p.requires_grad for p in ours_m.parameters())
    if kind == "tied":
        assert ep.state_dict["emb.weight"].data_ptr() == ep.state_dict["head.weight"].data_ptr()
        assert ours_m.emb.weight.data_ptr() == ours_m.head.weight.data_ptr()
        assert ep.state_dict["scale"].dtype == torch.float16 and ep.state_dict["offset"].dtype == torch.int64
    if kind == "dynamic":
        assert ep.range_constraints.keys() == theirs.range_constraints.keys()
        # Its symbols are torch's state, not data: the program is never kept.
        assert not ray_zerocopy._cache.put(mapping, [], ep, export._program_recipe("other", None), export._reduce)
    # torch's passes over the program work on what load_exported made.
    decomposed = ep.run_decompositions().module()
    with torch.no_grad():
        assert torch.equal(decomposed(inputs[0]), theirs.run_decompositions().module()(inputs[0]))
    # The program's JSON read into the same schema objects as torch reads it.
    from torch._export.serde import schema
    from torch._export.serde.serialize import _bytes_to_dataclass
    from ray_zerocopy._export import _to_dataclass
    with zipfile.ZipFile(path) as z:
        program = z.read(next(n for n in z.namelist() if n.endswith("models/model.json")))
    assert _to_dataclass(schema.ExportedProgram, json.loads(program)) == _bytes_to_dataclass(schema.ExportedProgram,
                                                                                            program)


def test_a_program_of_a_thousand_nodes_is_kept(daemon, tmp_path, monkeypatch):
    """A kept program's graph pickles as a list of nodes, not as the chain
    they link: one of over 1,000 nodes (a chain pickle would recurse past
    Python's limit) is kept and read back whole."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[m for _ in range(250) for m in (torch.nn.Linear(8, 8), torch.nn.ReLU())]).eval()
    x = torch.randn(2, 8)
    ep = torch.export.export(model, (x,))
    assert len(ep.graph.nodes) > 1000
    path = tmp_path / "deep.pt2"
    torch.export.save(ep, path)
    p = daemon.run_cli("preload", str(path), "--name", "ep-deep")
    assert p.returncode == 0, p.stderr
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "cache"))
    ray_zerocopy.load_exported("ep-deep")
    assert len(list((tmp_path / "cache").glob("*/*.pkl"))) == 1 and not list((tmp_path / "cache").glob("*/*.none"))
    with monkeypatch.context() as m:
        m.setattr(ray_zerocopy._export, "_deserialize", lambda *a: pytest.fail("deserialized again"))
        kept = ray_zerocopy.load_exported("ep-deep")
    theirs = torch.export.load(path)
    assert_same_program(kept, theirs)
    with torch.no_grad():
        assert torch.equal(kept.module()(x), theirs.module()(x))


def test_a_kept_graph_holding_an_erased_node_comes_back_whole(exported, tmp_path, monkeypatch):
    """An erased node stays in its graph's namespace (torch's erase_node):
    it is kept whole, outside the graph's list of nodes."""
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "cache"))
    gm = torch.fx.symbolic_trace(MLP())
    x = next(iter(gm.graph.nodes))
    with gm.graph.inserting_after(x):
        erased = gm.graph.call_function(torch.relu, (x,))
    gm.graph.erase_node(erased)
    gm.recompile()
    assert erased in gm.graph._graph_namespace._obj_to_name
    mapping = ray_zerocopy._store._map("ep-mlp", None)
    recipe = ("a graph module", 1)
    assert ray_zerocopy._cache.put(mapping, [], gm, recipe, ray_zerocopy._export._reduce)
    kept = ray_zerocopy._cache.get(mapping, recipe)
    kept.graph.lint()
    assert [n.name for n in kept.graph.nodes] == [n.name for n in gm.graph.nodes] and kept.code == gm.code
    (ghost,) = [n for n in kept.graph._graph_namespace._obj_to_name if isinstance(n, torch.fx.Node) and n._erased]
    assert ghost.name == erased.name and ghost.users == {} and ghost.next.name == erased.next.name
    inputs = torch.randn(2, 16)
    assert torch.equal(kept(inputs), gm(inputs))


def test_a_kept_graph_modules_code_is_kept_with_it_or_made_again(exported, tmp_path, monkeypatch):
    """A kept graph module's recompile on load is handed the code its graph
    made when it was kept, with the globals that code names, where each
    pickles as the same object; where one does not, the code is made
    again. The same code and forward either way, and the graph makes its
    code itself afterwards."""
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "cache"))
    export = ray_zerocopy._export
    assert all(map(export._by_name, (torch, math.inf, math.nan, None, "s", torch.device, operator.getitem)))
    assert not export._by_name(lambda: 0) and not export._by_name(object())
    assert not export._by_name(types.ModuleType("nowhere")) and not export._by_name(sys.modules["__main__"])
    gm = torch.fx.symbolic_trace(MLP())
    mapping = ray_zerocopy._store._map("ep-mlp", None)
    made = []
    code = torch.fx.Graph.python_code
    monkeypatch.setattr(torch.fx.Graph, "python_code", lambda self, *a, **k: made.append(self) or code(self, *a, **k))
    x = torch.randn(2, 16)
    for made_again, by_name in enumerate((export._by_name, lambda v: False)):
        recipe = ("a graph module", made_again)
        with monkeypatch.context() as m:
            m.setattr(export, "_by_name", by_name)
            assert ray_zerocopy._cache.put(mapping, [], gm, recipe, export._reduce)
        made.clear()
        kept = ray_zerocopy._cache.get(mapping, recipe)
        assert len(made) == made_again
        assert kept.code == gm.code and kept._lineno_map == gm._lineno_map
        ours, theirs = type(kept).forward, type(gm).forward
        assert all(getattr(ours.__code__, a) == getattr(theirs.__code__, a)
                   for a in ("co_code", "co_names", "co_consts", "co_varnames"))
        names = code(gm.graph, "self").globals  # the same objects (nan is not equal to itself)
        assert all(ours.__globals__[k] is v or repr(ours.__globals__[k]) == repr(v) for k, v in names.items())
        assert torch.equal(kept(x), gm(x))
        assert "python_code" not in vars(kept.graph)
        kept.recompile()
        assert len(made) == made_again + 1


def test_loads_in_threads_at_once(exported, monkeypatch, tmp_path):
    """torch's deserializer allows one deserialization per process at a time
    (a module global); loads in several threads of one process (a threaded
    actor) each get their program."""
    import threading
    path, inputs = exported["conv"]
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "cache"))  # the first loads deserialize
    with torch.no_grad():
        expected = torch.export.load(path).module()(inputs[0])
    start, outputs, errors = threading.Barrier(4), [], []

    def load():
        start.wait()
        try:
            for _ in range(3):
                with torch.no_grad():
                    outputs.append(ray_zerocopy.load_exported("ep-conv").module()(inputs[0]))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(outputs) == 12
    assert all(torch.equal(o, expected) for o in outputs)


def test_a_torch_the_fast_path_does_not_fit_loads_with_its_own_deserializer(exported, monkeypatch, tmp_path):
    from torch._export.serde import serialize
    from torch._export.serde.serialize import ExportedProgramDeserializer
    # A deserialize() that sets a module global (torch's graph deserializer
    # does) does not fit: its copy would set it in the copy's globals.
    assert not ray_zerocopy._export._fast_path_fits(serialize, serialize.GraphModuleDeserializer.deserialize)
    path, inputs = exported["mlp"]
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "cache"))  # nothing kept: it deserializes
    monkeypatch.setattr(ray_zerocopy._export, "_fast_path_fits", lambda *a: False)
    ray_zerocopy._export._deserialize.cache_clear()
    try:
        ep = ray_zerocopy.load_exported("ep-mlp")
        assert ray_zerocopy._export._deserialize().__func__ is ExportedProgramDeserializer.deserialize
        with torch.no_grad():
            assert torch.equal(ep.module()(inputs[0]), torch.export.load(path).module()(inputs[0]))
    finally:
        ray_zerocopy._export._deserialize.cache_clear()


def test_inspect_says_torch_export_and_lists_the_program(exported, daemon):
    p = daemon.run_cli("inspect", "ep-conv")
    assert p.returncode == 0, p.stderr
    assert "torch-export" in p.stdout, p.stdout
    assert "models/model.json" in p.stdout and "data/weights/model_weights_config.json" in p.stdout, p.stdout
    assert "bn.running_var" in p.stdout, p.stdout
    files = [line for line in p.stdout.splitlines() if line.startswith("files:")]
    assert files and "weight_0" not in files[0], p.stdout  # the weights are tensors, not files


def test_four_processes_share_one_copy(exported, daemon):
    info = ray_zerocopy._native.client().get("ep-mlp")
    code = textwrap.dedent("""
        import sys, torch, ray_zerocopy
        m = ray_zerocopy.load_exported("ep-mlp").module()
        with torch.no_grad():
            m(torch.randn(2, 16))
        for p in m.parameters():
            p.sum()  # every page of the weights touched
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    with processes_ready(code) as procs:
        pss = [segment_pss(p.pid, info["digest"]) for p in procs]
        weights = sum(t.numel() * t.element_size() for t in MLP().parameters())
        assert all(rss >= weights for rss, _ in pss), (pss, weights)  # each maps the weights
        assert sum(p for _, p in pss) <= 1.1 * info["size"], (pss, info["size"])  # one copy between them


def rewrite(src: Path, dst: Path, change=None, add=(), compress=None):
    """A copy of archive `src` with each entry's bytes passed through
    change(name, bytes) (None drops it), entries added, and optionally one
    entry compressed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        top = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if change is not None:
                data = change(info.filename[len(top) + 1:], data)
            if data is None:
                continue
            method = zipfile.ZIP_DEFLATED if compress and info.filename.endswith(compress) else zipfile.ZIP_STORED
            zout.writestr(info.filename, data, compress_type=method)
        for name, data in add:
            zout.writestr(f"{top}/{name}", data)
    return dst


def edit_config(kind, key, fn):
    def change(name, data):
        if name != f"data/{kind}/model_{kind}_config.json":
            return data
        doc = json.loads(data)
        fn(doc["config"][key])
        return json.dumps(doc).encode()
    return change


def test_bad_archives_are_refused_at_preload_and_publish_nothing(exported, daemon, tmp_path):
    mlp = exported["mlp"][0]
    tied = exported["tied"][0]
    cases = [
        ("not-pt2", rewrite(mlp, tmp_path / "a.pt2", lambda n, d: None if n == "archive_format" else d),
         "torch.export archive"),
        ("version", rewrite(mlp, tmp_path / "b.pt2", lambda n, d: b"1" if n == "archive_version" else d),
         "pt2 archive version 1; zerocopy reads version 0"),
        ("compressed", rewrite(mlp, tmp_path / "c.pt2", compress="weight_0"), "compressed"),
        ("pickled", rewrite(mlp, tmp_path / "d.pt2", edit_config("weights", "net.0.weight",
                                                                  lambda p: p.update(use_pickle=True))),
         "weight 'net.0.weight' is stored as a pickle"),
        ("too-big", rewrite(mlp, tmp_path / "e.pt2", edit_config(
            "weights", "net.2.bias", lambda p: p["tensor_meta"].update(sizes=[{"as_int": 5}]))),
         "weight 'net.2.bias' reaches past the end of its record data/weights/"),
        ("symbolic", rewrite(mlp, tmp_path / "f.pt2", edit_config(
            "weights", "net.2.bias", lambda p: p["tensor_meta"].update(sizes=[{"as_expr": {"expr_str": "s0"}}]))),
         "not a plain integer"),
        ("dtype", rewrite(mlp, tmp_path / "g.pt2", edit_config(
            "weights", "net.2.bias", lambda p: p["tensor_meta"].update(dtype=9))),
         "weight 'net.2.bias' has dtype 9"),
        ("aoti", rewrite(mlp, tmp_path / "h.pt2", add=[("data/aotinductor/model/model.so", b"\x7fELF")]),
         "AOTInductor package"),
        ("two", rewrite(mlp, tmp_path / "i.pt2", add=[("models/other.json", b"{}")]), "2 programs"),
        ("missing", rewrite(mlp, tmp_path / "j.pt2", lambda n, d: None if n == "data/weights/weight_1" else d),
         "names record data/weights/weight_1, which is missing"),
        ("script-object", rewrite(tied, tmp_path / "k.pt2", edit_config(
            "constants", "const", lambda p: p.update(path_name="custom_obj_0"))), "script object"),
        ("truncated", tmp_path / "l.pt2", "zip"),
        ("legacy", rewrite(mlp, tmp_path / "m.pt2", add=[("data/weights/model.pt", b"PK")]), "legacy layout"),
    ]
    (tmp_path / "l.pt2").write_bytes(mlp.read_bytes()[:-100])
    before = len(ray_zerocopy._native.client().list())
    for what, path, message in cases:
        p = daemon.run_cli("preload", str(path), "--name", f"bad-{what}")
        assert p.returncode != 0, (what, p.stderr)
        assert message in p.stderr, (what, p.stderr)
    assert len(ray_zerocopy._native.client().list()) == before
    # Not a torch.export model, and no such model.
    ray_zerocopy._store.publish(MLP().state_dict(), name="plain-state-dict")
    with pytest.raises(InvalidModelError, match="not a torch.export program"):
        ray_zerocopy.load_exported("plain-state-dict")
    with pytest.raises(ray_zerocopy.ModelNotFoundError):
        ray_zerocopy.load_exported("ep-no-such-model")


class Payload:
    """Unpickling it creates a file: code run by whoever unpickles it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_sample_inputs_that_are_not_plain_tensors_are_left_out_and_never_run(exported, daemon, tmp_path):
    """torch's deserializer, handed bytes it cannot load as weights, loads
    them again with weights_only=False: a pickle of code hidden as bytes in
    the sample inputs would run. load_exported never hands it such bytes."""
    import pickle
    marker = tmp_path / "pwned"
    hidden = io.BytesIO()
    torch.save(pickle.dumps(Payload(str(marker))), hidden)  # torch.load(weights_only=True) returns the bytes
    path = rewrite(exported["mlp"][0], tmp_path / "hidden.pt2",
                   lambda n, d: hidden.getvalue() if n == "data/sample_inputs/model.pt" else d)
    p = daemon.run_cli("preload", str(path), "--name", "ep-hidden")
    assert p.returncode == 0, p.stderr
    ep = ray_zerocopy.load_exported("ep-hidden")
    assert ep.example_inputs is None and not marker.exists()
    with torch.no_grad():
        x = torch.randn(2, 16)
        assert torch.equal(ep.module()(x), torch.export.load(exported["mlp"][0]).module()(x))
    # Plain sample inputs are kept, as torch keeps them.
    assert ray_zerocopy.load_exported("ep-mlp").example_inputs[0][0].shape == (2, 16)


def test_a_program_this_torch_cannot_read_is_an_error_at_load(exported, daemon, tmp_path):
    def change(name, data):
        if name != "models/model.json":
            return data
        doc = json.loads(data)
        doc["schema_version"]["major"] += 1  # a program from a future torch
        return json.dumps(doc).encode()
    path = rewrite(exported["mlp"][0], tmp_path / "future.pt2", change)
    p = daemon.run_cli("preload", str(path), "--name", "ep-future")
    assert p.returncode == 0, p.stderr  # preload reads only the configs
    with pytest.raises(InvalidModelError, match="cannot read its program.*schema version"):
        ray_zerocopy.load_exported("ep-future")


def test_an_exported_module_goes_through_the_seeds_wrappers(exported, ray_local):
    from ray_zerocopy import ActorWrapper, TaskWrapper
    path, inputs = exported["conv"]
    module = ray_zerocopy.load_exported("ep-conv").module()
    x = inputs[0]
    with torch.no_grad():
        want = torch.export.load(path).module()(x)

    @ray_local.remote
    class Actor:
        def __init__(self, wrapper):
            self.model = wrapper.load()

        def run(self, x):
            with torch.no_grad():
                return self.model(x)

    actor = Actor.remote(ActorWrapper(module))
    assert torch.equal(ray_local.get(actor.run.remote(x)), want)
    task = TaskWrapper(module)
    assert torch.equal(task(x), want)


# -- AOTInductor packages ------------------------------------------------------

EXTERNAL_WEIGHTS = {"aot_inductor.package_constants_in_so": False,
                    "aot_inductor.package_constants_on_disk_format": "pickle_weights"}


class Small(torch.nn.Module):  # weights, a buffer, tied weights
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(32, 16)
        self.fc = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 32, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16))

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.emb(ids))) * self.scale)


@pytest.fixture(scope="module")
def aoti(tmp_path_factory, daemon):
    """A package compiled here (CPU, about 30 s) with its weights beside its
    library, preloaded with the CLI as aoti-small."""
    torch.manual_seed(1)
    root = tmp_path_factory.mktemp("aoti")
    ids = torch.tensor([[1, 2, 3, 4]])
    ep = torch.export.export(Small().eval(), (ids,))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(root / "small.pt2"),
                                                    inductor_configs=EXTERNAL_WEIGHTS)
    p = daemon.run_cli("preload", path, "--name", "aoti-small")
    assert p.returncode == 0, p.stderr
    return Path(path), ids


def torch_runner(path):
    from torch.export.pt2_archive._package import load_pt2
    return load_pt2(str(path), load_weights_from_disk=True).aoti_runners["model"]


def other_cpu(name, data):
    """rewrite(): a package's metadata saying it was compiled for an
    instruction set no CPU has."""
    if not name.endswith("wrapper_metadata.json"):
        return data
    doc = json.loads(data)
    doc["AOTI_CPU_ISA"] = "AVX512 NO_SUCH_ISA"
    return json.dumps(doc).encode()


def test_an_aoti_package_runs_on_the_mapped_weights(aoti, daemon, tmp_path, monkeypatch):
    path, ids = aoti
    monkeypatch.setenv("ZEROCOPY_AOTI_CACHE", str(tmp_path / "cache"))
    runner = ray_zerocopy.load_aoti("aoti-small")
    assert torch.equal(runner(ids), torch_runner(path)(ids))
    info = ray_zerocopy._native.client().get("aoti-small")
    ranges = segment_ranges(info["digest"])
    assert ranges
    for fqn, t in runner._zerocopy_constants.items():
        assert any(lo <= t.data_ptr() < hi for lo, hi in ranges), fqn
    program = tmp_path / "cache" / info["digest"]  # the program's files, not the weights
    assert list((tmp_path / "cache").iterdir()) == [program]
    assert (program / "data/aotinductor/model").is_dir() and not (program / "data/weights").exists()
    p = daemon.run_cli("inspect", "aoti-small")
    assert "format:      aoti" in p.stdout and ".wrapper.so" in p.stdout and "head.weight" in p.stdout, p.stdout
    # The library reads the mapping itself, not a copy: weights zeroed in this
    # process's (copy-on-write) view change what it computes, to what torch's
    # own runner computes with zero weights. In a process of its own, which
    # the altered pages stay in.
    code = textwrap.dedent(f"""
        import torch, ray_zerocopy
        runner = ray_zerocopy.load_aoti("aoti-small")
        ids = torch.tensor({ids.tolist()})
        before = runner(ids)
        for t in runner._zerocopy_constants.values():
            t.zero_()
        after = runner(ids)
        print(bool(before.abs().sum() > 0), bool(after.abs().sum() == 0))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"], done.stdout
    # The shared copy is untouched: this process still computes torch's result.
    assert torch.equal(ray_zerocopy.load_aoti("aoti-small")(ids), torch_runner(path)(ids))
    # A copy of the runner (torch's copies share its loader) holds the mapped
    # tensors too: the loader keeps only their addresses.
    import copy
    twin = copy.deepcopy(runner)
    assert twin._zerocopy_constants is runner._zerocopy_constants
    del runner
    assert torch.equal(twin(ids), torch_runner(path)(ids))
    # A program missing a file (a cache cleaner) is written again.
    library = next(program.glob("data/aotinductor/model/*.so"))
    library.unlink()
    assert torch.equal(ray_zerocopy.load_aoti("aoti-small")(ids), torch_runner(path)(ids))
    assert library.exists()
    # A cache others may write is refused: no library is loaded from it.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("ZEROCOPY_AOTI_CACHE", str(shared))
    with pytest.raises(ray_zerocopy.FailedPreconditionError, match="writable by no one else"):
        ray_zerocopy.load_aoti("aoti-small")


def test_four_processes_share_one_aoti_copy(aoti, daemon):
    info = ray_zerocopy._native.client().get("aoti-small")
    code = textwrap.dedent("""
        import sys, torch, ray_zerocopy
        runner = ray_zerocopy.load_aoti("aoti-small")
        runner(torch.tensor([[1, 2, 3, 4]]))
        for t in runner._zerocopy_constants.values():
            t.sum()
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    with processes_ready(code) as procs:
        pss = [segment_pss(p.pid, info["digest"]) for p in procs]
        # Each maps the weights (whole pages of the segment); the four hold
        # one copy of the model between them.
        assert all(rss > 0 for rss, _ in pss), pss
        assert sum(p for _, p in pss) <= 1.1 * info["size"], (pss, info["size"])


def test_aoti_packages_that_cannot_be_shared_or_run_here_are_refused(aoti, daemon, tmp_path, monkeypatch):
    path, _ = aoti
    monkeypatch.setenv("ZEROCOPY_AOTI_CACHE", str(tmp_path / "cache"))
    # torch's default: the weights inside the library.
    inside = rewrite(path, tmp_path / "inside.pt2", lambda n, d: None if n.endswith("weights_config.json") else d)
    p = daemon.run_cli("preload", str(inside), "--name", "aoti-inside")
    assert p.returncode != 0 and "inside its compiled library" in p.stderr, p.stderr
    assert "package_constants_in_so" in p.stderr
    # Compiled for instructions this CPU lacks: preloads, refused at load
    # (torch's loader would only warn, then run it).
    p = daemon.run_cli("preload", str(rewrite(path, tmp_path / "other.pt2", other_cpu)), "--name", "aoti-other")
    assert p.returncode == 0, p.stderr
    with pytest.raises(ray_zerocopy.FailedPreconditionError, match="compiled for another machine.*NO_SUCH_ISA"):
        ray_zerocopy.load_aoti("aoti-other")
    # Each loader takes its own kind.
    ray_zerocopy._store.publish(MLP().state_dict(), name="plain-for-aoti")
    with pytest.raises(InvalidModelError, match="not an AOTInductor package"):
        ray_zerocopy.load_aoti("plain-for-aoti")
    with pytest.raises(InvalidModelError, match="not a torch.export program"):
        ray_zerocopy.load_exported("aoti-small")


def test_the_cpp_example_runs_the_package_on_the_mapped_weights(aoti, daemon, tmp_path):
    """zerocopy::LoadAotInductor (client/cpp/examples/aoti_infer.cc): no
    Python, the same outputs as torch's runner in Python."""
    from conftest import BUILD
    path, _ = aoti
    binary = BUILD / "client/cpp/zerocopy_aoti_infer"
    if not binary.exists():
        pytest.skip("built without LibTorch (ZEROCOPY_WITH_TORCH=OFF)")
    env = dict(os.environ, ZEROCOPY_SOCKET=daemon.socket, ZEROCOPY_AOTI_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([str(binary), "aoti-small", "1,4", "3", "long"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    want = float(torch_runner(path)(torch.tensor([[0, 1, 2, 3]])).sum())
    assert "output shape [1,4,32]" in done.stdout, done.stdout
    assert f"sum {want:.6f}" in done.stdout or abs(float(done.stdout.split("sum ")[1]) - want) < 1e-4, done.stdout
    assert "4 constants" in done.stdout, done.stdout
    info = ray_zerocopy._native.client().get("aoti-small")
    assert (tmp_path / "cache" / info["digest"] / "data/aotinductor/model").is_dir()  # the layout Python writes
    # Compiled for instructions this CPU lacks: refused before it runs.
    p = daemon.run_cli("preload", str(rewrite(path, tmp_path / "other.pt2", other_cpu)), "--name", "aoti-other-cpp")
    assert p.returncode == 0, p.stderr
    done = subprocess.run([str(binary), "aoti-other-cpp", "1,4", "1", "long"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1 and "compiled for another machine" in done.stderr, done.stderr
    assert "NO_SUCH_ISA" in done.stderr, done.stderr
    # Not a package: a precise error, exit 1.
    ray_zerocopy._store.publish(MLP().state_dict(), name="plain-for-cpp")
    done = subprocess.run([str(binary), "plain-for-cpp", "1,4"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "not an AOTInductor package" in done.stderr, done.stderr
