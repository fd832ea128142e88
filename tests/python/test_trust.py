"""Weights are data, a pickled skeleton is code (SECURITY.md). A member of
the socket's group publishes, under a name another user loads, a model
whose skeleton runs code when unpickled: loading it by name refuses unless
the loader trusts the publisher; its weights stay open to all. The member
is a real other user (setpriv) publishing with the C++ test client."""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import ray_zerocopy
from conftest import BUILD, Daemon
from ray_zerocopy import ModelWrapper, PermissionDeniedError, _store

GROUP = 47124
MEMBER = 65534  # nobody


class Payload:
    """Unpickling it creates a file: code of the publisher's, run by the loader."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.empty(4096, dtype=torch.uint8))


@pytest.fixture(scope="module")
def shared():
    d = Daemon(config=f'socket_group = "{GROUP}"\nsegment_group = "{GROUP}"\n')
    os.chmod(d.dir, 0o755)
    os.chmod(Path(d.segment_dir).parent, 0o755)
    tools = Path(tempfile.mkdtemp(prefix="zc-trust-"))
    os.chmod(tools, 0o755)
    client = tools / "zerocopy_test_client"
    shutil.copy(BUILD / "tests/cpp/zerocopy_test_client", client)
    os.chmod(client, 0o755)
    marker = tools / "pwned"
    metadata = tools / "skeleton"
    import pickle
    metadata.write_bytes(_store.MAGIC + pickle.dumps(Payload(str(marker))))
    os.chmod(metadata, 0o644)
    os.chmod(tools, 0o777)  # the payload, run by whoever loads it, writes its marker here
    done = subprocess.run(["/usr/bin/setpriv", f"--reuid={MEMBER}", f"--regid={GROUP}", "--clear-groups", "--",
                           str(client), "--socket", d.socket, "publish", "llama", "9", str(metadata)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("OK "), done.stdout + done.stderr
    d.digest = done.stdout.split()[1]
    d.marker = marker
    yield d
    d.stop()
    shutil.rmtree(tools, ignore_errors=True)


def test_a_skeleton_by_name_from_another_user_does_not_run(shared, monkeypatch):
    monkeypatch.setenv("ZEROCOPY_SOCKET", shared.socket)
    monkeypatch.delenv("ZEROCOPY_TRUST_UIDS", raising=False)
    info = ray_zerocopy._native.client().get("llama")
    assert info["publisher_uid"] == MEMBER and info["publisher_gid"] == GROUP
    with pytest.raises(PermissionDeniedError, match=f"published by uid {MEMBER}.*ZEROCOPY_TRUST_UIDS={MEMBER}"):
        _store.load("llama")
    with pytest.raises(PermissionDeniedError, match="pickled skeleton"):
        ModelWrapper.from_store("llama")
    with pytest.raises(PermissionDeniedError, match="TorchScript archive"):
        _store.load_jit("llama")
    with pytest.raises(PermissionDeniedError, match="torch.export program"):
        ray_zerocopy.load_exported("llama")
    with pytest.raises(PermissionDeniedError, match="AOTInductor library"):
        ray_zerocopy.load_aoti("llama")
    assert not shared.marker.exists()
    # Weights are data: open to every publisher.
    state = ray_zerocopy.load_state_dict("llama")
    assert torch.equal(state["w"], torch.full((4096,), 9, dtype=torch.uint8))
    module = ModelWrapper.from_store("llama", model=Holder).load()
    assert torch.equal(module.w, state["w"])
    assert not shared.marker.exists()
    # `zerocopy ls` and `inspect` say who published it.
    listing = shared.run_cli("inspect", "llama")
    assert f"uid {MEMBER} gid {GROUP}" in listing.stdout


def test_a_trusted_publisher_runs(shared, monkeypatch):
    monkeypatch.setenv("ZEROCOPY_SOCKET", shared.socket)
    monkeypatch.setenv("ZEROCOPY_TRUST_UIDS", f"1234, {MEMBER}")
    _store.load("llama")  # the payload runs: the check was all that stood in its way
    assert shared.marker.exists()
    shared.marker.unlink()
    monkeypatch.setenv("ZEROCOPY_TRUST_UIDS", "")
    monkeypatch.setenv("ZEROCOPY_TRUST_GIDS", str(GROUP))
    _store.load("llama")
    assert shared.marker.exists()
    shared.marker.unlink()
    monkeypatch.setenv("ZEROCOPY_TRUST_GIDS", "not-a-number")
    with pytest.raises(ray_zerocopy.InvalidModelError, match="ZEROCOPY_TRUST_GIDS"):
        _store.load("llama")


def test_ones_own_models_load_by_name(daemon):
    model = torch.nn.Linear(3, 2)
    _store.publish(model, name="mine", socket=daemon.socket)
    loaded = _store.load("mine", socket=daemon.socket)
    assert torch.equal(loaded.weight, model.weight)
