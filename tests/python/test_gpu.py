"""GPU sharing on a real GPU (marked gpu: tests/gpu/run.sh runs them; the
default run deselects them). Four processes load one model onto cuda:0
through ActorWrapper: the daemon makes one device copy, every process's
parameters live in it, outputs equal the model's own on the GPU, device
memory grows by about one copy, and attaching is timed against
`.to("cuda")`."""
import json
import multiprocessing
import subprocess
import time

import pytest
import torch

import models
from conftest import Daemon
from ray_zerocopy import ActorWrapper, ModelWrapper, _native

pytestmark = pytest.mark.gpu


class Big(torch.nn.Module):
    """2 GiB of float32 weights in 64 layers."""

    def __init__(self, layers=64):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(2896, 2896) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _attach(wrapper_bytes, x, ready, done, out, baseline=True):
    """A process of the pool: attach to the shared copy (timed), run the
    model; then, for comparison, what it would do without us: copy the
    host-mapped model to the GPU itself (`.to("cuda")`, timed)."""
    import pickle
    wrapper = pickle.loads(wrapper_bytes)
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # torch's CUDA start, which every GPU process pays anyway
    t0 = time.perf_counter()
    model = wrapper.load()
    torch.cuda.synchronize()
    attach_ms = (time.perf_counter() - t0) * 1000
    allocated = torch.cuda.memory_allocated()  # by torch in this process: the weights are not among it
    y = model(x.cuda()).cpu()
    result = {"attach_ms": attach_ms, "y": y, "device": str(next(model.parameters()).device),
              "allocated_by_torch": allocated}
    if baseline:
        host = wrapper._wrapper._load_local(False, None)  # the same weights, mapped on the host
        t0 = time.perf_counter()
        private = host.to("cuda")
        torch.cuda.synchronize()
        result["to_cuda_ms"] = (time.perf_counter() - t0) * 1000
        del private, host
        torch.cuda.empty_cache()
    out.put(result)
    ready.wait()  # hold the model while the parent measures
    done.wait()


def _gpu_memory_by_pid() -> dict:
    """MiB of device memory per process, from nvidia-smi (IPC-opened memory
    counts for the process that allocated it)."""
    r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    used = {}
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            used[int(parts[0])] = int(parts[1])
    return used


@pytest.fixture(scope="module")
def gpu_daemon():
    d = Daemon(host_budget="8G")
    yield d
    d.stop()


def test_four_processes_share_one_device_copy(gpu_daemon, monkeypatch):
    import pickle
    monkeypatch.setenv("ZEROCOPY_SOCKET", gpu_daemon.socket)
    assert torch.cuda.is_available()
    torch.manual_seed(0)
    model = Big().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    wrapper = ActorWrapper(model, device="cuda:0", strict=True)
    x = torch.randn(8, 2896)
    expected = model.to("cuda:0")(x.cuda()).cpu()
    model = model.cpu()
    torch.cuda.empty_cache()

    free_before, _ = torch.cuda.mem_get_info(0)
    ctx = multiprocessing.get_context("spawn")
    ready, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_attach, args=(pickle.dumps(wrapper), x, ready, done, out)) for _ in range(4)]
    results = []
    for p in procs:  # one after another: the first makes the copy, the others attach
        p.start()
        results.append(out.get(timeout=300))
    free_after, _ = torch.cuda.mem_get_info(0)
    by_pid = _gpu_memory_by_pid()
    stats = _native.client(gpu_daemon.socket).stats()
    ready.set()
    done.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    growth = free_before - free_after
    gpu = stats["gpus"][0]
    workers_mib = [by_pid.get(p.pid) for p in procs]
    print(json.dumps({
        "model_mib": round(size / 2**20), "processes": 4,
        "device_memory_growth_mib": round(growth / 2**20),
        "growth_in_model_sizes": round(growth / size, 2),
        "nvidia_smi_mib": {"zerocopyd": by_pid.get(gpu_daemon.proc.pid), "workers": workers_mib},
        "attach_ms": [round(r["attach_ms"], 1) for r in results],
        "to_cuda_ms": [round(r["to_cuda_ms"], 1) for r in results],
        "attach_speedup_vs_to_cuda": round(sorted(r["to_cuda_ms"] for r in results)[1] /
                                           sorted(r["attach_ms"] for r in results[1:])[1], 1),
        "uploads": gpu["uploads"], "leases": gpu["leases"]}))
    cpu_expected = model(x)
    for r in results:
        assert r["device"] == "cuda:0"
        assert r["allocated_by_torch"] < size / 100  # the weights are not torch allocations of this process
        assert torch.allclose(r["y"], expected, rtol=1e-5, atol=1e-6), (r["y"] - expected).abs().max()
        assert torch.allclose(r["y"], cpu_expected, rtol=1e-3, atol=1e-4), (r["y"] - cpu_expected).abs().max()
    assert gpu["uploads"] == 1
    assert gpu["leases"] == 4
    assert growth < 4 * size  # four private copies would need at least this
    if by_pid:  # nvidia-smi sees processes (not in every container)
        assert by_pid.get(gpu_daemon.proc.pid, 0) * 2**20 >= size
        assert all(m is None or m * 2**20 < size for m in workers_mib)


def test_a_killed_process_releases_its_device_lease(gpu_daemon, monkeypatch):
    import os
    import signal
    import pickle
    monkeypatch.setenv("ZEROCOPY_SOCKET", gpu_daemon.socket)
    wrapper = ModelWrapper.from_model(models.MLP())
    ctx = multiprocessing.get_context("spawn")
    ready, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    actor = ActorWrapper.__new__(ActorWrapper)
    actor._wrapper, actor.device, actor.use_fast_load, actor.strict = wrapper, "cuda:0", False, True
    p = ctx.Process(target=_attach, args=(pickle.dumps(actor), torch.randn(2, 16), ready, done, out, False))
    p.start()
    out.get(timeout=300)

    def leases():
        return sum(g["leases"] for g in _native.client(gpu_daemon.socket).stats()["gpus"])

    held = leases()
    assert held >= 1
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    deadline = time.monotonic() + 5
    while leases() != held - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leases() == held - 1


def test_torchscript_and_state_dicts_load_onto_the_shared_copy(gpu_daemon, monkeypatch):
    from ray_zerocopy import JITActorWrapper, _store
    monkeypatch.setenv("ZEROCOPY_SOCKET", gpu_daemon.socket)
    torch.manual_seed(4)
    model = models.MLP().eval()
    x = torch.randn(3, 16)
    scripted = torch.jit.trace(model, x)
    loaded = JITActorWrapper(scripted, device="cuda:0", strict=True).load()
    params = list(loaded.parameters())
    assert all(p.device.type == "cuda" for p in params)
    assert torch.allclose(loaded(x.cuda()).cpu(), model(x), rtol=1e-4, atol=1e-5)

    info = _store.publish(model, name="mlp-state", socket=gpu_daemon.socket)
    state = _store.load_state_dict("mlp-state", socket=gpu_daemon.socket, device="cuda:0")
    assert all(t.is_cuda for t in state.values())
    base = min(t.data_ptr() for t in state.values())
    assert max(t.data_ptr() for t in state.values()) - base < info["size"]  # all in one allocation
    for name, t in model.state_dict().items():
        assert torch.equal(state[name].cpu(), t)


def test_a_hugging_face_model_on_the_shared_device_copy(gpu_daemon, monkeypatch, tmp_path):
    import transformers

    import ray_zerocopy
    from test_hf import make
    monkeypatch.setenv("ZEROCOPY_SOCKET", gpu_daemon.socket)
    d = make(tmp_path, "llama")
    info = ray_zerocopy.preload_pretrained(str(d), name="hf-gpu")
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "skeletons"))
    theirs = transformers.LlamaForCausalLM.from_pretrained(d).to("cuda:0").eval()
    ids = torch.tensor([[1, 2, 3, 4]], device="cuda:0")
    # Built by transformers, then unpickled from the skeleton the first kept.
    for model in (ray_zerocopy.from_pretrained("hf-gpu", device="cuda:0"),
                  ray_zerocopy.from_pretrained("hf-gpu", device="cuda:0")):
        params = list(model.parameters())
        assert all(p.device == torch.device("cuda", 0) for p in params)
        assert all(b.device == torch.device("cuda", 0) for b in model.buffers())
        base = min(p.data_ptr() for p in params)
        assert max(p.data_ptr() for p in params) - base < info["size"]  # all in the one shared copy
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, theirs(ids).logits, rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "skeletons").glob("*/*.pkl"))) == 1


def test_an_exported_program_and_a_cuda_aoti_package_on_the_shared_device_copy(gpu_daemon, monkeypatch, tmp_path):
    import ray_zerocopy
    from test_export import EXTERNAL_WEIGHTS, ConvNet
    monkeypatch.setenv("ZEROCOPY_SOCKET", gpu_daemon.socket)
    monkeypatch.setenv("ZEROCOPY_AOTI_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8, device="cuda:0")
    ep = torch.export.export(ConvNet().eval().to("cuda:0"), (x,))
    # The exported program: saved on cuda:0, so load_exported puts it there.
    # Loaded twice: deserialized and kept, then the kept program unpickled
    # over the GPU's mapping.
    monkeypatch.setenv("ZEROCOPY_SKELETON_CACHE", str(tmp_path / "skeletons"))
    info = ray_zerocopy.preload_exported(ep, name="ep-gpu")
    with torch.no_grad():
        want = ep.module()(x)
    for again in (False, True):
        with monkeypatch.context() as m:
            if again:
                m.setattr(ray_zerocopy._export, "_deserialize", lambda *a: pytest.fail("deserialized again"))
            ours = ray_zerocopy.load_exported("ep-gpu")
        tensors = [*ours.state_dict.values(), *ours.constants.values()]
        assert all(t.device == torch.device("cuda", 0) for t in tensors)
        base = min(t.data_ptr() for t in tensors)
        assert max(t.data_ptr() for t in tensors) - base < info["size"]  # all in the one shared copy
        with torch.no_grad():
            torch.testing.assert_close(ours.module()(x), want)
    # The same program compiled for CUDA, its constants the GPU's shared copy.
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "conv.pt2"),
                                                    inductor_configs=EXTERNAL_WEIGHTS)
    done = gpu_daemon.run_cli("preload", path, "--name", "aoti-gpu")
    assert done.returncode == 0, done.stderr
    runner = ray_zerocopy.load_aoti("aoti-gpu", device_index=0)
    assert all(t.device == torch.device("cuda", 0) for t in runner._zerocopy_constants.values())
    torch.testing.assert_close(runner(x), want, rtol=1e-4, atol=1e-5)
