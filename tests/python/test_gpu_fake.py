"""GPU sharing from Python without a GPU: a daemon with the fake backend
(shared host files posing as GPUs) and processes that see its fake GPUs
($ZEROCOPY_FAKE_GPUS) exercise the device path of the package: the device
argument, leases, one copy for every process, the fallback and strict=True.
A fake copy reaches torch as CPU tensors over the shared file; on a real GPU
(tests/python/test_gpu.py) the same path gives CUDA tensors."""
import gc
import json

import pytest
import torch

import models
import ray_zerocopy
from conftest import Daemon, run_python
from ray_zerocopy import ActorWrapper, GpuSharingUnavailableError, ModelWrapper, TaskWrapper, _native, _store

U0 = "GPU-0a0a0a0a-0000-4000-8000-000000000000"
U1 = "GPU-1b1b1b1b-1111-4111-8111-111111111111"


@pytest.fixture(scope="module")
def fake_gpu_daemon(tmp_path_factory):
    fake_dir = tmp_path_factory.mktemp("fake-gpu")
    d = Daemon(config=f'gpu_backend = "fake"\nfake_gpus = ["{U0}", "{U1}"]\nfake_gpu_memory = "256M"\n'
                      f'fake_gpu_dir = "{fake_dir}"\n')
    d.fake_dir = fake_dir
    yield d
    d.stop()


@pytest.fixture
def fake_gpus(monkeypatch):
    """This process (and its children) see U1 as cuda:0 and U0 as cuda:1."""
    monkeypatch.setenv("ZEROCOPY_FAKE_GPUS", f"{U1},{U0}")


def gpu_stats(socket, uuid):
    for g in _native.client(socket).stats()["gpus"]:
        if g["uuid"] == uuid:
            return g
    return {"uploads": 0, "copies": 0, "leases": 0}


def mapped_from(path_prefix: str, address: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end and len(fields) > 5 and fields[5].startswith(path_prefix):
                return True
    return False


def test_state_dict_on_a_gpu_views_the_one_shared_copy(fake_gpu_daemon, fake_gpus):
    sock = fake_gpu_daemon.socket
    torch.manual_seed(1)
    model = models.Tied()
    info = _store.publish(model, name="tied-gpu", socket=sock)
    state = _store.load_state_dict("tied-gpu", socket=sock, device="cuda:1")  # U0 in this process
    expected = model.state_dict()
    assert set(state) == set(expected)
    for name, t in state.items():
        assert torch.equal(t, expected[name]), name
        assert mapped_from(str(fake_gpu_daemon.fake_dir), t.data_ptr()), f"{name} is not in the device copy"
    assert state["head.weight"].data_ptr() == state["embed.weight"].data_ptr()  # tied stays tied
    g = gpu_stats(sock, U0)
    assert (g["uploads"], g["copies"], g["leases"]) == (1, 1, 1)
    assert _native.client(sock).get("tied-gpu")["gpu_uuids"] == [U0]

    # A process that numbers the GPUs otherwise attaches to the same copy.
    code = ("import json, sys, ray_zerocopy._store as s\n"
            "st = s.load_state_dict('tied-gpu', socket=sys.argv[1], device='cuda:0')\n"
            "print(json.dumps({k: v.float().sum().item() for k, v in st.items() if not v.is_complex()}))")
    r = run_python(code, sock, env={"ZEROCOPY_FAKE_GPUS": U0})
    assert r.returncode == 0, r.stderr
    sums = json.loads(r.stdout)
    assert sums["proj"] == pytest.approx(expected["proj"].float().sum().item())
    assert gpu_stats(sock, U0)["uploads"] == 1

    del state, t
    gc.collect()
    assert gpu_stats(sock, U0)["leases"] == 0  # the last tensor gone: lease released
    assert info["size"] == gpu_stats(sock, U0)["bytes_used"]


def test_wrappers_load_onto_the_shared_copy(fake_gpu_daemon):
    code = f"""
import json, sys, torch, ray_zerocopy, models
from ray_zerocopy import ActorWrapper, ModelWrapper
torch.manual_seed(2)
model = models.Pipeline()
actor = ActorWrapper(model, device="cuda:0", strict=True)
loaded = actor.load()
x = torch.randn(3, 16)
same = torch.equal(loaded(x), model(x))
ptr = loaded.encoder.fc1.weight.data_ptr()
fake = any(line.split()[-1].startswith("{fake_gpu_daemon.fake_dir}") and
           int(line.split()[0].split("-")[0], 16) <= ptr < int(line.split()[0].split("-")[1], 16)
           for line in open("/proc/self/maps") if len(line.split()) > 5)
stats = ray_zerocopy.stats()
print(json.dumps({{"same": same, "fake": fake, "gpus": stats["gpus"]}}))
"""
    r = run_python(code, env={"ZEROCOPY_FAKE_GPUS": U0, "ZEROCOPY_SOCKET": fake_gpu_daemon.socket})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["same"]
    assert out["fake"], "the pipeline's weights are not views of the device copy"
    gpu = next(g for g in out["gpus"] if g["uuid"] == U0)
    assert gpu["leases"] >= 1 and gpu["uploads"] >= 1


def test_without_sharing_strict_raises_and_the_default_falls_back_with_a_warning(daemon, fake_gpus, monkeypatch):
    # The session daemon has no GPU to share (CUDA backend, no GPU; or no CUDA in its build).
    wrapper = ModelWrapper.from_model(models.MLP())
    with pytest.raises(GpuSharingUnavailableError) as e:
        wrapper.load(device="cuda:0", strict=True)
    assert e.value.code in ("FAILED_PRECONDITION", "UNIMPLEMENTED")
    with pytest.raises(GpuSharingUnavailableError):
        ActorWrapper(models.MLP(), device="cuda:0", strict=True).load()

    moved = []

    def fake_to(self, *args, **kwargs):  # this machine's torch has no CUDA: record the move instead
        moved.append(str(args[0]))
        return self

    monkeypatch.setattr(torch.nn.Module, "to", fake_to)
    with pytest.warns(RuntimeWarning, match="makes a copy of its own"):
        loaded = wrapper.load(device="cuda:0")
    assert moved == ["cuda:0"]
    assert isinstance(loaded, models.MLP)


def test_device_errors_are_precise(fake_gpu_daemon, fake_gpus):
    sock = fake_gpu_daemon.socket
    _store.publish(models.MLP(), name="mlp-gpu", socket=sock)
    with pytest.raises(GpuSharingUnavailableError, match="no fake GPU 7"):
        _store.load_state_dict("mlp-gpu", socket=sock, device="cuda:7")
    with pytest.raises(ray_zerocopy.ModelNotFoundError):
        _store.load_state_dict("no-such-model", socket=sock, device="cuda:0")
    with pytest.raises(ray_zerocopy.InvalidModelError, match="'cpu' and 'cuda'"):
        _store.load_state_dict("mlp-gpu", socket=sock, device="meta")


def test_task_wrapper_runs_tasks_on_the_shared_copy(fake_gpu_daemon, fake_gpus, monkeypatch):
    import concurrent.futures
    monkeypatch.setenv("ZEROCOPY_SOCKET", fake_gpu_daemon.socket)
    torch.manual_seed(3)
    model = models.MLP()
    x = torch.randn(2, 16)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # A thread pool shares this process's client for $ZEROCOPY_SOCKET: the fake daemon's.
        tasks = TaskWrapper(model, device="cuda:1", executor=pool, strict=True)
        assert torch.equal(tasks(x), model(x))
    assert gpu_stats(fake_gpu_daemon.socket, U0)["uploads"] >= 1


def test_other_refusals_keep_their_own_classes(fake_gpu_daemon):
    # GpuSharingUnavailableError is for device requests only: a pinned
    # model's delete (FAILED_PRECONDITION too) is a FailedPreconditionError.
    sock = fake_gpu_daemon.socket
    info = _store.publish(models.MLP(), name="pinned-one", pin=True, socket=sock)
    with pytest.raises(ray_zerocopy.ZeroCopyError) as e:
        _native.client(sock).delete(info["digest"])
    assert e.type is ray_zerocopy.FailedPreconditionError
    assert e.value.code == "FAILED_PRECONDITION"
    _native.client(sock).delete(info["digest"], force=True)
