"""Models made only of empty tensors (torch.empty(0), a zero-length
dimension): size 0, one or more tensors. The request fuzzer found this shape
(issue 19); every path publishes, stores and loads it like any other."""
import pytest
import torch
from safetensors.torch import save_file

import ray_zerocopy
from conftest import Daemon
from ray_zerocopy import ModelWrapper, _native, _store

EMPTY = {"x": torch.empty(0), "grid": torch.zeros(3, 0, 2, dtype=torch.float16),
         "ids": torch.empty(0, dtype=torch.int64)}


def assert_same_empty(got, expected):
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype and got[k].numel() == 0, k


class OnlyEmptyBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("nothing", torch.empty(0))

    def forward(self, x):
        return x + self.nothing.sum()


def test_python_publish_and_load(daemon):
    info = _store.publish(dict(EMPTY))
    assert info["size"] == 0 and info["tensor_count"] == len(EMPTY)
    assert_same_empty(ray_zerocopy.load_state_dict(info["digest"]), EMPTY)
    assert_same_empty(_store.load(info["digest"]), EMPTY)
    wrapper = ModelWrapper.from_model(OnlyEmptyBuffer())
    assert wrapper._model_info[""]["bytes"] == 0
    model = wrapper.load()
    assert model.nothing.numel() == 0
    x = torch.randn(2, 3)
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("kind", ["safetensors", "torch.save"])
def test_cli_preload_of_a_file_of_empty_tensors(daemon, tmp_path, kind):
    path = tmp_path / ("empty.safetensors" if kind == "safetensors" else "empty.pt")
    if kind == "safetensors":
        save_file(dict(EMPTY), str(path))
    else:
        torch.save(dict(EMPTY), path)
    done = daemon.run_cli("--json", "preload", str(path), "--name", f"empty-{path.suffix[1:]}")
    assert done.returncode == 0, done.stderr
    info = _native.client().get(f"empty-{path.suffix[1:]}")
    assert info["size"] == 0 and info["tensor_count"] == len(EMPTY)
    assert_same_empty(ray_zerocopy.load_state_dict(f"empty-{path.suffix[1:]}"), EMPTY)


def test_fake_gpu_copy_of_empty_tensors(tmp_path, monkeypatch):
    uuid = "GPU-0a0a0a0a-0000-4000-8000-0000000000e0"
    d = Daemon(config=f'gpu_backend = "fake"\nfake_gpus = ["{uuid}"]\nfake_gpu_memory = "64M"\n'
                      f'fake_gpu_dir = "{tmp_path}"\n')
    try:
        monkeypatch.setenv("ZEROCOPY_FAKE_GPUS", uuid)
        info = _store.publish(dict(EMPTY), socket=d.socket)
        state = _store.load_state_dict(info["digest"], socket=d.socket, device="cuda:0")
        assert_same_empty(state, EMPTY)
    finally:
        d.stop()
