"""Programs written for the published ray-zerocopy 0.2.0 run unchanged on
ours: each behaviour below is checked on the baseline (installed apart,
same import name: run in its own process) and on ours, side by side."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from ray_zerocopy import ModelWrapper, TaskWrapper

PROBE = """
import json, os, pickle, sys, torch, ray
# This job's workers import this process's ray_zerocopy (the published
# one or ours: same import name), not the one other jobs see.
ray.init(address="auto", log_to_driver=False, configure_logging=False,
         runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
import ray_zerocopy
from ray_zerocopy import ModelWrapper, JITModelWrapper
import models
out = {"version": ray_zerocopy.__version__}
torch.manual_seed(30)
pipeline = models.TwoStage()
data = torch.load(sys.argv[1])
rewritten = ModelWrapper.for_tasks(pipeline)
out["threshold"] = rewritten.threshold
out["label"] = rewritten.label
out["has_encoder"] = hasattr(rewritten, "encoder")
out["task_load_has_encoder"] = hasattr(ModelWrapper.from_model(pipeline, mode="task").load(), "decoder")
try:
    rewritten.no_such_attribute
    out["missing"] = None
except AttributeError:
    out["missing"] = "AttributeError"
with torch.inference_mode():
    out["call"] = rewritten(data).tolist()
wrapper = ModelWrapper.from_model(pipeline, mode="actor")
serialized = wrapper.serialize()
out["serialize_type"] = type(serialized).__name__
out["serialize_keys"] = sorted(serialized)
with torch.inference_mode():
    out["deserialized_call"] = ModelWrapper.deserialize(**serialized).load()(data).tolist()
out["roundtrip_pickle"] = type(pickle.loads(pickle.dumps(wrapper))).__name__
out["generic"] = repr(ModelWrapper[models.TwoStage]).split(".")[-1]
out["jit_generic"] = repr(JITModelWrapper[models.TwoStage]).split(".")[-1]
jit = torch.jit.trace(models.MLP().eval(), torch.randn(2, 16))
jit_serialized = JITModelWrapper.from_model(jit, mode="actor").serialize()
out["jit_serialize_keys"] = sorted(jit_serialized)
with torch.inference_mode():
    out["jit_call"] = JITModelWrapper.deserialize(**jit_serialized).load()(data).tolist()
import importlib.resources
out["py_typed"] = importlib.resources.files("ray_zerocopy").joinpath("py.typed").is_file()
print(json.dumps(out))
"""


def probe(paths, data_file):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    done = subprocess.run([sys.executable, "-c", PROBE, str(data_file)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def both(ray_local, tmp_path_factory):
    from conftest import PACKAGE_PATHS
    baseline = Path(sys.executable).parent.parent / "baseline-ray-zerocopy"
    assert (baseline / "ray_zerocopy").is_dir(), "deploy/install-deps.sh installs the baseline there"
    here = str(Path(__file__).parent)
    data_file = tmp_path_factory.mktemp("dropin") / "data.pt"
    torch.manual_seed(31)
    torch.save(torch.randn(3, 16), data_file)
    theirs = probe([str(baseline), here], data_file)
    ours = probe(PACKAGE_PATHS, data_file)
    assert theirs["version"] == "0.2.0" and ours["version"] != "0.2.0"
    return theirs, ours


@pytest.mark.parametrize("key", ["threshold", "label", "has_encoder", "task_load_has_encoder", "missing",
                                 "serialize_type", "roundtrip_pickle", "generic", "jit_generic", "py_typed"])
def test_same_behaviour_as_the_published_library(both, key):
    theirs, ours = both
    assert ours[key] == theirs[key], f"{key}: published {theirs[key]!r}, ours {ours[key]!r}"


@pytest.mark.parametrize("key", ["call", "deserialized_call", "jit_call"])
def test_same_outputs_as_the_published_library(both, key):
    theirs, ours = both
    torch.testing.assert_close(torch.tensor(ours[key]), torch.tensor(theirs[key]), rtol=1e-5, atol=1e-6)


def test_serialize_has_the_published_keys_and_more(both):
    theirs, ours = both
    assert set(theirs["serialize_keys"]) <= set(ours["serialize_keys"])
    assert set(theirs["jit_serialize_keys"]) <= set(ours["jit_serialize_keys"])


def test_task_wrapper_forwards_values_models_and_methods(ray_local):
    torch.manual_seed(32)
    pipeline = models.TwoStage()
    wrapped = TaskWrapper(pipeline)
    assert wrapped.threshold == 0.25 and wrapped.label == "two-stage"
    data = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(wrapped.encoder(data), pipeline.encoder(data), atol=1e-6)  # a task of its own
        assert torch.equal(wrapped.score(data), pipeline.score(data))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wrapped.nope
    import pickle
    restored = pickle.loads(pickle.dumps(wrapped))
    assert restored.label == "two-stage"


def test_a_stand_in_runs_the_models_methods_only(ray_local):
    torch.manual_seed(33)
    pipeline = models.TwoStage()
    rewritten = ModelWrapper.for_tasks(pipeline)
    data = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.allclose(rewritten.encoder.forward(data), pipeline.encoder(data), atol=1e-6)
    assert not hasattr(rewritten.encoder, "fc1")  # a submodule, not a method: stays with the model
    with pytest.raises(AttributeError, match="no method 'nope'"):
        rewritten.decoder.nope
    restored = ModelWrapper.deserialize(**ModelWrapper.from_model(pipeline, mode="task").serialize()).load()
    assert not hasattr(restored.encoder, "fc1")


def test_deserialize_refuses_what_serialize_did_not_make():
    with pytest.raises(TypeError, match=r"deserialize\(\*\*wrapper.serialize\(\)\)"):
        ModelWrapper.deserialize(b"old bytes")
