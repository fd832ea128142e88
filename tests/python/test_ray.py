"""The seed documents' examples on a real local Ray instance, and sharing
between Ray actors proved with the kernel's accounting."""
import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from ray_zerocopy import (ActorWrapper, JITActorWrapper, JITModelWrapper, JITTaskWrapper, ModelWrapper,
                          TaskWrapper)


def same(a, b):
    """Equal up to float rounding: a Ray worker runs with one thread (Ray
    sets OMP_NUM_THREADS=1), which may round differently from the driver.
    Bitwise equality of load() is tested in-process (test_model_wrapper)."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return True


def segment_pss(pid: int, digest: str) -> tuple[int, int]:
    """(RSS, PSS) in bytes of process pid's mappings of the model's segment."""
    rss = pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if "-" in line.split()[0] and len(line.split()) >= 5:
                inside = line.rstrip().endswith(f"{digest}.seg")
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif inside and line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


@contextlib.contextmanager
def processes_ready(code: str, n: int = 4):
    """n Python processes running `code`, which prints "ready" once it holds
    what is measured and then waits for its stdin to close; yields them
    once all are ready."""
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        yield procs
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)


def test_task_wrapper_calls_and_forwarded_methods(ray_local):
    torch.manual_seed(10)
    pipeline = models.Pipeline()
    data = torch.randn(4, 16)
    wrapped = TaskWrapper(pipeline)
    result = wrapped(data)  # a Ray task; blocks and returns the value
    assert same(result, pipeline(data))
    assert same(wrapped.predict(data), pipeline.predict(data))
    results = [wrapped.predict(d) for d in data.split(2)]
    assert same(torch.cat(results), pipeline.predict(data))
    assert same(wrapped.predict_proba(data), pipeline.predict_proba(data))
    # Stateless: each call loads afresh, so state set by one call is gone.
    wrapped.set_threshold(2.0)
    assert same(wrapped.above_threshold(data), pipeline.above_threshold(data))


def test_model_wrapper_task_mode(ray_local):
    model = models.MLP()
    data = torch.randn(3, 16)
    wrapped = ModelWrapper.for_tasks(model)
    assert same(wrapped(data), model.eval()(data))
    wrapper = ModelWrapper.from_model(model, mode="task")
    assert same(wrapper.load()(data), model(data))


class InferenceActor:
    def __init__(self, actor_wrapper):
        self.pipeline = actor_wrapper.load()

    def __call__(self, batch):
        inputs = torch.tensor(batch["data"])
        with torch.no_grad():
            outputs = self.pipeline(inputs)
        return {"predictions": outputs.cpu().numpy()}


def test_actor_wrapper_with_ray_data_map_batches(ray_local):
    ray = ray_local
    from ray.data import ActorPoolStrategy
    torch.manual_seed(11)
    pipeline = models.Pipeline()
    actor_wrapper = ActorWrapper(pipeline, device="cpu")
    rows = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    ds = ray.data.from_items([{"data": r} for r in rows])
    results = ds.map_batches(
        InferenceActor,
        fn_constructor_kwargs={"actor_wrapper": actor_wrapper},
        batch_size=16,
        compute=ActorPoolStrategy(size=4),  # 4 actors share the model via zero-copy
    )
    got = np.stack([r["predictions"] for r in results.take_all()])
    with torch.no_grad():
        expected = pipeline(torch.tensor(rows)).numpy()
    assert got.shape == expected.shape
    # Row order is not guaranteed across actors: compare as sets of rows.
    assert sorted(map(tuple, got.round(5))) == sorted(map(tuple, expected.round(5)))


def test_four_ray_actors_share_one_copy(ray_local):
    ray = ray_local
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(8)])  # 512 MiB
    actor_wrapper = ActorWrapper(model, device="cpu")
    digest = actor_wrapper._model_info[""]["digest"]

    @ray.remote
    class InferenceActor:
        def __init__(self, actor_wrapper):
            import time
            t0 = time.perf_counter()
            self.pipeline = actor_wrapper.load()
            self.load_ms = (time.perf_counter() - t0) * 1000

        def predict(self, data):
            return self.pipeline(data)

        def touch(self):
            import os
            return os.getpid(), self.load_ms, float(sum(p.sum() for p in self.pipeline.parameters()))

    actors = [InferenceActor.remote(actor_wrapper) for _ in range(4)]
    data = torch.randn(2, 4096)
    results = ray.get([actor.predict.remote(data) for actor in actors])
    with torch.no_grad():
        expected = model.eval()(data)
    for r in results:
        assert same(r, expected)
    touched = ray.get([a.touch.remote() for a in actors])
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    total_pss = 0
    print()
    for pid, load_ms, _ in touched:
        rss, pss = segment_pss(pid, digest)
        print(f"actor pid {pid}: load() {load_ms:.1f} ms, segment RSS {rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB")
        assert rss >= size * 0.99  # every weight resident in each actor ...
        total_pss += pss
    print(f"sum of segment PSS: {total_pss / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model")
    assert total_pss <= size * 1.05  # ... and one copy among them
    assert total_pss >= size * 0.95
    for a in actors:
        ray.kill(a)
    del model


@pytest.mark.parametrize("kind", ["trace", "script"])
def test_jit_wrappers(ray_local, kind):
    ray = ray_local
    torch.manual_seed(12)
    model = models.MLP().eval()
    example_input = torch.randn(2, 16)
    jit_model = torch.jit.trace(model, example_input) if kind == "trace" else torch.jit.script(model)
    data = torch.randn(5, 16)

    wrapped = JITTaskWrapper(jit_model)
    assert same(wrapped(data), jit_model(data))
    assert same(JITModelWrapper.for_tasks(jit_model)(data), jit_model(data))
    assert same(JITModelWrapper.from_model(jit_model, mode="task").load()(data), jit_model(data))

    actor_wrapper = JITActorWrapper(jit_model, device="cpu")

    @ray.remote
    class Actor:
        def __init__(self, actor_wrapper):
            self.model = actor_wrapper.load()

        def predict(self, x):
            return self.model(x)

    actor = Actor.remote(actor_wrapper)
    assert same(ray.get(actor.predict.remote(data)), jit_model(data))

    class Pipeline:
        def __init__(self):
            self.encoder = torch.jit.trace(models.MLP(16, 8, 8).eval(), example_input)
            self.decoder = torch.jit.trace(models.MLP(8, 8, 2).eval(), torch.randn(2, 8))

        def __call__(self, x):
            return self.decoder(self.encoder(x))

    pipeline = Pipeline()
    assert same(JITModelWrapper.for_tasks(pipeline)(data), pipeline(data))


def test_the_examples_on_a_spawn_process_pool(daemon):
    """The task-mode examples once more, with a spawn-context
    ProcessPoolExecutor instead of Ray."""
    import concurrent.futures
    import multiprocessing
    torch.manual_seed(13)
    pipeline = models.Pipeline()
    data = torch.randn(4, 16)
    jit_model = torch.jit.trace(models.MLP().eval(), torch.randn(2, 16))
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        wrapped = TaskWrapper(pipeline, executor=pool)
        assert same(wrapped(data), pipeline(data))
        assert same(wrapped.predict(data), pipeline.predict(data))
        assert same(wrapped.predict_proba(data), pipeline.predict_proba(data))
        assert same(JITTaskWrapper(jit_model, executor=pool)(data), jit_model(data))
    actor_wrapper = ActorWrapper(pipeline, device="cpu")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        outputs = list(pool.map(_load_and_run, [actor_wrapper] * 2, [data] * 2))
    for out in outputs:
        assert same(out, pipeline(data))


def _load_and_run(actor_wrapper, data):
    return actor_wrapper.load()(data)


BASELINE = """
import sys, pickle, torch, ray
ray.init(address="auto", log_to_driver=False, configure_logging=False)
import ray_zerocopy
assert ray_zerocopy.__version__ == "0.2.0", ray_zerocopy.__file__
pipeline = pickle.load(open(sys.argv[1], "rb"))
loaded = ray_zerocopy.ModelWrapper.from_model(pipeline, mode="actor").load()
data = torch.load(sys.argv[2])
with torch.inference_mode():  # its weights are inference tensors
    torch.save(loaded(data).clone(), sys.argv[3])
"""


def test_same_outputs_as_the_published_library(ray_local, tmp_path):
    """ray-zerocopy 0.2.0 (installed apart: same import name) wraps the same
    pipeline in another process; both give identical outputs."""
    import os
    import pickle
    import subprocess
    import sys
    venv = Path(sys.executable).parent.parent
    baseline = venv / "baseline-ray-zerocopy"
    assert (baseline / "ray_zerocopy").is_dir(), "deploy/install-deps.sh installs the baseline there"
    torch.manual_seed(14)
    pipeline = models.Pipeline()
    data = torch.randn(6, 16)
    (tmp_path / "pipeline.pkl").write_bytes(pickle.dumps(pipeline))
    torch.save(data, tmp_path / "data.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(baseline), str(Path(__file__).parent)]))
    done = subprocess.run([sys.executable, "-c", BASELINE, str(tmp_path / "pipeline.pkl"), str(tmp_path / "data.pt"),
                           str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        ours = ModelWrapper.from_model(pipeline).load()(data)
    assert torch.equal(ours, theirs)
