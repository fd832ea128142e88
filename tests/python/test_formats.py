"""Preloading what users have (issue: formats). Each format is preloaded by
the real CLI into the real daemon, then loaded from Python and compared
bitwise with what torch itself loads from the file. torch.save files come
in both layouts: the zip archive and the legacy one (torch < 1.6, or
_use_new_zipfile_serialization=False). Bad input: a clear error, a
non-zero exit, and nothing published."""
import json
import os
import pickle
import shutil
import subprocess
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import ray_zerocopy
from ray_zerocopy import _native
from ray_zerocopy import JITModelWrapper, ModelWrapper


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 8)
        self.register_buffer("scale", torch.tensor([2.0]))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) * self.scale


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net().eval()


def preload(daemon, path, *args):
    r = daemon.run_cli("--json", "preload", str(path), *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def models(daemon):
    r = daemon.run_cli("--json", "ls")
    assert r.returncode == 0, r.stderr
    return {m["digest"] for m in json.loads(r.stdout).get("models", [])}


def assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128]


def sample(dtype, shape=(3, 5)):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape).to(dtype)


# --- torch.save -------------------------------------------------------------

# The two layouts of torch.save, by the keyword that picks one.
LAYOUTS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}
LEGACY_SEEDS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus" / "torch_save"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_save_state_dict_round_trips_bitwise(daemon, tmp_path, suffix, layout):
    net = make_net()
    path = tmp_path / f"pytorch_model{suffix}"
    torch.save(net.state_dict(), path, **LAYOUTS[layout])
    info = preload(daemon, path, "--name", f"net{suffix}")
    assert info["format"] == "torch"
    assert_same(ray_zerocopy.load_state_dict(f"net{suffix}"), torch.load(path, weights_only=True))
    # ModelWrapper.from_store with a factory: outputs bitwise equal to
    # torch.load + load_state_dict.
    ref = Net()
    ref.load_state_dict(torch.load(path, weights_only=True))
    ref.eval()
    model = ModelWrapper.from_store(f"net{suffix}", model=lambda: Net()).load()
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_save_every_dtype_views_ties_and_nesting(daemon, tmp_path, layout):
    torch.manual_seed(1)
    base = torch.randn(6, 4)
    state = {f"t.{str(d).split('.')[1]}": sample(d) for d in DTYPES}
    state.update({"tied.a": base, "tied.b": base, "view.t": base.t(), "view.slice": base[2:5, 1:3],
                  "scalar": torch.tensor(3.5), "empty": torch.empty(0, 7)})
    checkpoint = {"model": state, "epoch": 7, "config": {"lr": 0.5, "name": "demo", "layers": [1, 2]},
                  "optimizer": {"state": {0: {"step": torch.tensor(10.0)}}}, "note": None}
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path, **LAYOUTS[layout])
    info = preload(daemon, path)
    got = ray_zerocopy.load_state_dict(info["digest"])
    loaded = torch.load(path, weights_only=True)
    want = {f"model.{k}": v for k, v in loaded["model"].items()}
    want["optimizer.state.0.step"] = loaded["optimizer"]["state"][0]["step"]
    assert_same(got, want)
    # Tied stay tied and views keep their strides; one storage for base.
    assert got["model.tied.a"].untyped_storage().data_ptr() == got["model.tied.b"].untyped_storage().data_ptr()
    assert got["model.view.t"].stride() == (1, 4)
    assert got["model.view.slice"].untyped_storage().data_ptr() == got["model.tied.a"].untyped_storage().data_ptr()
    # Non-tensor entries are the model's metadata.
    meta = json.loads(_native.client().get(info["digest"])["metadata"])
    assert meta == {"epoch": 7, "config": {"lr": 0.5, "name": "demo", "layers": [1, 2]}, "note": None}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_save_of_parameters_and_cuda_free_paths(daemon, tmp_path, layout):
    net = make_net(3)
    params = dict(net.named_parameters())  # nn.Parameter objects, not plain tensors
    path = tmp_path / "params.pt"
    torch.save(params, path, **LAYOUTS[layout])
    info = preload(daemon, path)
    assert_same(ray_zerocopy.load_state_dict(info["digest"]),
                {k: v.detach() for k, v in torch.load(path, weights_only=True).items()})


def test_legacy_torch_save_storage_views_and_pickle_protocol_4(daemon, tmp_path):
    # A storage view, as torch < 1.0 wrote them (tests/fuzz/make_seeds.py
    # legacy_views): 'part' lies in the one storage, further in.
    views = LEGACY_SEEDS / "legacy_views"
    info = preload(daemon, views)
    got = ray_zerocopy.load_state_dict(info["digest"])
    assert_same(got, torch.load(views, weights_only=True))
    assert got["part"].untyped_storage().data_ptr() == got["whole"].untyped_storage().data_ptr()
    assert got["part"].data_ptr() == got["whole"].data_ptr() + 3 * 4
    # pickle_protocol=4 frames its pickles (torch's weights_only loader
    # cannot read those: the reference is the full loader).
    torch.manual_seed(2)
    state = {"a": torch.randn(4, 3), "b": torch.arange(5), "c": {"d": torch.randn(2).half()}}
    path = tmp_path / "p4.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    want = torch.load(path, weights_only=False)
    assert_same(ray_zerocopy.load_state_dict(preload(daemon, path)["digest"]),
                {"a": want["a"], "b": want["b"], "c.d": want["c"]["d"]})


def test_legacy_torch_save_of_newer_dtypes_reads_what_was_saved(daemon, tmp_path):
    # uint16/32/64 and float8 sit on untyped storages, which torch.load of
    # a legacy file cannot read (torch 2.x: 'UntypedStorage' has no
    # attribute 'dtype'); the bytes are unambiguous, so zerocopy reads them:
    # compared with what was saved, and with torch.load should it learn to.
    state = {"u16": torch.tensor([1, 2, 60000]).to(torch.uint16), "u64": torch.tensor([1, 2**40]).to(torch.uint64),
             "f8": torch.randn(5).to(torch.float8_e4m3fn), "f32": torch.randn(3)}
    path = tmp_path / "newer_legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    references = [state]
    try:
        references.append(torch.load(path, weights_only=False))
    except AttributeError:
        pass
    got = ray_zerocopy.load_state_dict(preload(daemon, path)["digest"])
    for want in references:
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].view(torch.uint8).equal(want[k].view(torch.uint8)), k


# --- sharded safetensors ----------------------------------------------------

def write_sharded(dirpath, state, shards=3):
    dirpath.mkdir(exist_ok=True)
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n].contiguous() for n in part}, str(dirpath / fname))
        weight_map.update({n: fname for n in part})
    (dirpath / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(t.nbytes for t in state.values())}, "weight_map": weight_map}))


def test_sharded_safetensors_directory_is_one_model(daemon, tmp_path):
    net = make_net(5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    write_sharded(tmp_path / "hf", state)
    info = preload(daemon, tmp_path / "hf", "--name", "sharded")
    assert info["format"] == "safetensors-sharded" and info["tensor_count"] == len(state)
    assert_same(ray_zerocopy.load_state_dict("sharded"), state)
    model = ModelWrapper.from_store("sharded", model=lambda: Net()).load()
    x = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    # The index file itself works too and gives the same digest.
    again = preload(daemon, tmp_path / "hf" / "model.safetensors.index.json")
    assert again["digest"] == info["digest"]


def test_single_safetensors_every_dtype(daemon, tmp_path):
    state = {f"t{i}": sample(d) for i, d in enumerate(DTYPES) if not d.is_complex}
    save_file(state, str(tmp_path / "model.safetensors"))
    info = preload(daemon, tmp_path)  # the directory holding model.safetensors
    assert info["format"] == "safetensors"
    assert_same(ray_zerocopy.load_state_dict(info["digest"]), state)


# --- TorchScript --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["traced", "scripted"])
def test_torchscript_archive_loads_in_python_like_torch_jit_load(daemon, tmp_path, kind):
    net = make_net(7)
    jit = torch.jit.trace(net, torch.randn(1, 32)) if kind == "traced" else torch.jit.script(net)
    path = tmp_path / f"{kind}.pt"
    torch.jit.save(jit, str(path))
    info = preload(daemon, path, "--name", f"jit-{kind}")
    assert info["format"] == "torchscript"
    # The skeleton in the metadata holds no weight bytes.
    meta = _native.client().get(f"jit-{kind}")["metadata"]
    assert len(meta) < os.path.getsize(path)
    weights = net.fc1.weight.detach().numpy().tobytes()
    assert weights[:64] not in meta
    loaded = JITModelWrapper.from_store(f"jit-{kind}").load()
    reference = torch.jit.load(str(path))
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    # Every parameter and buffer lies in the model's segment mapping.
    segment = info["segment_path"]
    for name, p in list(loaded.named_parameters()) + list(loaded.named_buffers()):
        assert mapped_file(p.data_ptr()) == segment, name


def test_the_cli_loads_no_libtorch_and_hands_torchscript_to_its_twin(daemon, tmp_path):
    # `zerocopy` starts without LibTorch (every preload used to pay for it);
    # a TorchScript archive is read by zerocopy-torchscript next to it
    # (test above). Without the twin, the error says what is missing.
    linked = subprocess.run(["ldd", daemon.cli], capture_output=True, text=True, check=True).stdout
    assert "libtorch" not in linked and "libc10" not in linked, linked
    twin = os.path.join(os.path.dirname(daemon.cli), "zerocopy-torchscript")
    if os.path.exists(twin):  # built with LibTorch (not the sanitizer builds)
        assert "libtorch_cpu" in subprocess.run(["ldd", twin], capture_output=True, text=True, check=True).stdout
    lonely = tmp_path / "bin" / "zerocopy"
    lonely.parent.mkdir()
    shutil.copy(daemon.cli, lonely)
    archive = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(make_net()), str(archive))
    before = models(daemon)
    r = subprocess.run([str(lonely), "--socket", daemon.socket, "preload", str(archive)], capture_output=True,
                       text=True)
    assert r.returncode == 1
    assert "zerocopy-torchscript" in r.stderr and "LibTorch" in r.stderr, r.stderr
    assert "ZEROCOPY_TORCHSCRIPT" in r.stderr and "Debian package" in r.stderr, r.stderr
    assert models(daemon) == before
    # ZEROCOPY_TORCHSCRIPT names the twin wherever it is (a packaged
    # zerocopy in /usr/bin, the twin in a source build).
    env = dict(os.environ, ZEROCOPY_TORCHSCRIPT=str(tmp_path / "missing"))
    r = subprocess.run([str(lonely), "--socket", daemon.socket, "preload", str(archive)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 1 and str(tmp_path / "missing") in r.stderr, r.stderr
    if os.path.exists(twin):
        env["ZEROCOPY_TORCHSCRIPT"] = twin
        r = subprocess.run([str(lonely), "--socket", daemon.socket, "preload", str(archive), "--name", "named-twin"],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        listed = json.loads(daemon.run_cli("--json", "ls").stdout)["models"]
        assert any("named-twin" in m.get("names", []) for m in listed), listed


def mapped_file(address):
    """The file mapped at `address` in this process (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    return None


# --- bad input ----------------------------------------------------------------

def refused(daemon, path, *args, match):
    before = models(daemon)
    r = daemon.run_cli("preload", str(path), *args)
    assert r.returncode != 0
    assert match in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line
    assert models(daemon) == before
    assert not [f for f in os.listdir(daemon.segment_dir) if f.startswith("staging-")]
    return r.stderr


def good_pt(tmp_path):
    path = tmp_path / "good.pt"
    torch.save(make_net().state_dict(), path)
    return path


def test_truncated_torch_save_archives_are_refused(daemon, tmp_path):
    data = good_pt(tmp_path).read_bytes()
    for cut in (len(data) // 4, len(data) // 2, len(data) - 30, len(data) - 1):
        p = tmp_path / f"cut{cut}.pt"
        p.write_bytes(data[:cut])
        refused(daemon, p, match="zerocopy: ")


def test_corrupt_pickle_is_refused(daemon, tmp_path):
    src = good_pt(tmp_path)
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    entries[pkl] = entries[pkl][:40] + b"\xff\xfe" + entries[pkl][42:]
    bad = tmp_path / "badpickle.pt"
    with zipfile.ZipFile(bad, "w", compression=zipfile.ZIP_STORED) as z:
        for n, b in entries.items():
            z.writestr(n, b)
    refused(daemon, bad, match="is not valid UTF-8")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/zerocopy-pwned",))


def test_pickles_holding_unexpected_types_run_nothing(daemon, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Evil()}, path)
    if os.path.exists("/tmp/zerocopy-pwned"):
        os.unlink("/tmp/zerocopy-pwned")
    refused(daemon, path, match="zerocopy will not load")
    assert not os.path.exists("/tmp/zerocopy-pwned")
    module = tmp_path / "module.pt"
    torch.save({"m": nn.Linear(2, 2)}, module)
    refused(daemon, module, match="torch.nn.modules.linear.Linear")


def _storage_pickle(numel, key="0"):
    """data.pkl of {'w': tensor} whose storage declares `numel` floats."""
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if obj == "STORAGE":
                return ("storage", torch.FloatStorage, key, "cpu", numel)
            return None

    import io
    buf = io.BytesIO()
    rebuild = torch._utils._rebuild_tensor_v2

    class T:
        def __reduce__(self):
            import collections
            return (rebuild, ("STORAGE", 0, (numel,), (1,), False, collections.OrderedDict()))

    P(buf, protocol=2).dump({"w": T()})
    return buf.getvalue()


def test_storage_larger_than_its_entry_or_missing_is_refused(daemon, tmp_path):
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _storage_pickle(1000))
        z.writestr("archive/data/0", b"\0" * 16)  # 4 floats, not 1000
    refused(daemon, big, match="declares 1000 elements")
    missing = tmp_path / "missing.pt"
    with zipfile.ZipFile(missing, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _storage_pickle(4, key="7"))
    refused(daemon, missing, match="archive/data/7 is missing")


def test_hostile_and_broken_legacy_torch_save_files_are_refused(daemon, tmp_path):
    if os.path.exists("/tmp/zerocopy-pwned"):
        os.unlink("/tmp/zerocopy-pwned")
    evil = tmp_path / "evil_legacy.pt"
    torch.save({"w": torch.ones(2), "x": _Evil()}, evil, _use_new_zipfile_serialization=False)
    error = refused(daemon, evil, match="system, which a state dict does not need and zerocopy will not load")
    assert "the object pickle at byte" in error and "(opcode 0x63)" in error, error
    assert not os.path.exists("/tmp/zerocopy-pwned")
    module = tmp_path / "module_legacy.pt"
    torch.save({"m": nn.Linear(2, 2)}, module, _use_new_zipfile_serialization=False)
    refused(daemon, module, match="torch.nn.modules.linear.Linear")
    # One storage of 4 floats: its element count is the 8 bytes before its data.
    good = tmp_path / "good_legacy.pt"
    torch.save({"w": torch.arange(4.0)}, good, _use_new_zipfile_serialization=False)
    data = good.read_bytes()
    count_at = len(data) - 16 - 8
    assert struct.unpack_from("<q", data, count_at) == (4,)
    wrong = tmp_path / "wrong_count.pt"
    wrong.write_bytes(data[:count_at] + struct.pack("<q", 5) + data[count_at + 8:])
    refused(daemon, wrong, match="holds 5 elements of f32 but the object pickle declares 4")
    for cut in (len(data) - 1, len(data) - 20, len(data) // 2, 20):
        p = tmp_path / f"cut{cut}.pt"
        p.write_bytes(data[:cut])
        refused(daemon, p, "--format", "torch", match="(truncated?)")


def test_wrong_magic_and_format_mismatch(daemon, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF" + os.urandom(200))
    refused(daemon, junk, match="not a checkpoint zerocopy knows")
    st = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3)}, str(st))
    refused(daemon, st, "--format", "torch", match="not a zip archive")
    refused(daemon, good_pt(tmp_path), "--format", "pickle", match="unknown format 'pickle'")
    jit = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(make_net()), str(jit))
    refused(daemon, jit, "--format", "torch", match="TorchScript archive")


def test_bad_safetensors_are_refused(daemon, tmp_path):
    def write(name, header: dict, data: bytes):
        h = json.dumps(header).encode()
        p = tmp_path / name
        p.write_bytes(struct.pack("<Q", len(h)) + h + data)
        return p
    refused(daemon, write("outside.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                          b"\0" * 8), match="outside the data region")
    refused(daemon, write("overlap.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                          b"\0" * 12), match="overlap")
    p = tmp_path / "longheader.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 20) + b"{}")
    refused(daemon, p, "--format", "safetensors", match="runs past the end")


def test_bad_shard_indexes_are_refused(daemon, tmp_path):
    state = {k: v.clone() for k, v in make_net().state_dict().items()}
    d = tmp_path / "hf"
    write_sharded(d, state, shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    os.unlink(d / "model-00002-of-00002.safetensors")
    refused(daemon, d, match="model-00002-of-00002.safetensors, which is not in")
    write_sharded(d, state, shards=2)
    for bad, match in [
        ({**index, "weight_map": {**index["weight_map"], "fc1.weight": "../../etc/passwd"}}, "not a plain file name"),
        ({**index, "weight_map": {**index["weight_map"], "fc1.weight": "model-00001-of-00002.safetensors"}},
         "but the index says"),
        ({"metadata": {}}, "no \"weight_map\""),
        ({**index, "weight_map": {**index["weight_map"], "ghost": "model-00001-of-00002.safetensors"}},
         "'ghost' is not in shard"),
    ]:
        (d / "model.safetensors.index.json").write_text(json.dumps(bad))
        refused(daemon, d, match=match)
    (d / "model.safetensors.index.json").write_text("{\"weight_map\": ")
    refused(daemon, d, match="not valid JSON")


def test_torch_save_newer_dtypes_round_trip_and_unsupported_tensors_are_refused(daemon, tmp_path):
    # uint16/32/64 and float8 are pickled through _rebuild_tensor_v3 over an UntypedStorage.
    state = {"u16": torch.tensor([1, 2, 60000]).to(torch.uint16), "u32": torch.tensor([7, 4000000000]).to(torch.uint32),
             "u64": torch.tensor([1, 2**40]).to(torch.uint64), "f8": torch.randn(5).to(torch.float8_e4m3fn),
             "f8b": torch.randn(5).to(torch.float8_e5m2), "f32": torch.randn(3)}
    path = tmp_path / "newer.pt"
    torch.save(state, path)
    info = preload(daemon, path)
    got = ray_zerocopy.load_state_dict(info["digest"])
    want = torch.load(path, weights_only=True)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].view(torch.uint8).equal(want[k].view(torch.uint8)), k
    for name, value, match in [
        ("quantized", torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8), "dense tensors only"),
        ("sparse", torch.randn(4, 4).to_sparse(), "dense tensors only"),
        ("fnuz", torch.zeros(2).to(torch.float8_e4m3fnuz), "dtype torch.float8_e4m3fnuz"),
    ]:
        p = tmp_path / f"{name}.pt"
        torch.save({"ok": torch.ones(2), name: value}, p)
        refused(daemon, p, match=match)
