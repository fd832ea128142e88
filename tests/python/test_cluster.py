"""A Ray cluster of several nodes on this machine, each with its own
zerocopyd: wrappers made on one node load on the others, the bytes pulled
through Ray once per node. Run on its own (ctest python_cluster): it starts
its own Ray cluster, and one test run never holds two.

Nodes: A (head; the driver's node, its daemon is the driver's), B and C
(workers), D (a worker the fault test removes). Work is placed with the
custom resources node_a .. node_d. Transfers use 1 MiB chunks here
(ZEROCOPY_PULL_CHUNK_BYTES in each node's environment: one leaf of the
digest, the smallest chunk a pull checks) so that models cross in several
chunks. The cluster's directory (a detached actor) lives as long as the
cluster; tests that delete models behind its back see what a stale entry
costs (one failed attempt).
"""
import os

# Every node, and the driver, on 127.0.0.1. Ray turns a loopback address
# given to ray.init into the machine's own IP unless its "cluster mode" is
# off; that setting changes nothing else (it only picks the default node
# IP), and ray reads it when first imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import models
from conftest import Daemon
from ray_zerocopy import ActorWrapper, JITActorWrapper, TaskWrapper, _native
from ray_zerocopy.errors import CorruptModelError, ModelNotFoundError

CHUNK = 4 << 20


def same(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return True


class Node:
    def __init__(self, name, daemon, ray_node):
        self.name, self.daemon, self.ray_node = name, daemon, ray_node
        self.id = ray_node.node_id

    @property
    def resource(self):
        return {f"node_{self.name}": 1}

    def client(self):
        return _native.client(self.daemon.socket)

    def staging_files(self):
        return [p for p in os.listdir(self.daemon.segment_dir) if p.startswith("staging")]

    def has(self, digest):
        return any(m["digest"] == digest for m in self.client().list())


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster
    daemons = {n: Daemon(host_budget="4G") for n in "abcd"}
    os.environ["ZEROCOPY_SOCKET"] = daemons["a"].socket  # the driver's node
    common = dict(node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=8,
                  object_store_memory=256 << 20)

    def args(n):
        return dict(common, resources={f"node_{n}": 100},
                    env_vars={"ZEROCOPY_SOCKET": daemons[n].socket, "ZEROCOPY_PULL_CHUNK_BYTES": str(CHUNK),
                              "PYTHONPATH": os.environ["PYTHONPATH"], "RAY_USAGE_STATS_ENABLED": "0"})

    c = Cluster(initialize_head=True, head_node_args=args("a"))
    nodes = {"a": Node("a", daemons["a"], c.head_node)}
    for n in "bcd":
        nodes[n] = Node(n, daemons[n], c.add_node(**args(n)))
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield ray, c, nodes
    ray.shutdown()
    c.shutdown()
    for d in daemons.values():
        d.stop()


@pytest.fixture
def ray_and_nodes(cluster):
    ray, _, nodes = cluster
    yield ray, nodes
    for n in nodes.values():
        if n.daemon.proc.poll() is None:
            assert n.staging_files() == [], f"node {n.name} kept staging files"


def segment_pss(pid, digest):
    pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                inside = line.rstrip().endswith(f"{digest}.seg")
            elif inside and line.startswith("Pss:"):
                pss += int(fields[1]) * 1024
    return pss


def loader(ray):
    @ray.remote(num_cpus=1)
    class Loader:
        def __init__(self, wrapper):
            self.wrapper = wrapper
            self.model = None

        def load(self, device=None):
            t0 = time.perf_counter()
            self.model = self.wrapper.load(device) if device else self.wrapper.load()
            return time.perf_counter() - t0

        def run(self, x):
            with torch.no_grad():
                return self.model(x)

        def info(self):
            import ray_zerocopy
            return os.getpid(), ray.get_runtime_context().get_node_id(), ray_zerocopy.stats()

    return Loader


def test_an_actor_on_another_node_loads_the_drivers_pipeline(ray_and_nodes):
    ray, nodes = ray_and_nodes
    a, b = nodes["a"], nodes["b"]
    torch.manual_seed(20)
    pipeline = models.Pipeline()
    wrapper = ActorWrapper(pipeline)
    digests = {i["digest"] for i in wrapper._model_info.values()}
    assert all(i["node"] == a.id for i in wrapper._model_info.values())
    assert not any(b.has(d) for d in digests)
    actor = loader(ray).options(resources=b.resource).remote(wrapper)
    ray.get(actor.load.remote())
    data = torch.randn(5, 16)
    assert same(ray.get(actor.run.remote(data)), pipeline(data))
    pid, node, stats = ray.get(actor.info.remote())
    assert node == b.id
    # B's daemon holds each model once, under the same digest, pulled from A.
    on_b = {m["digest"]: m for m in b.client().list()}
    for d in digests:
        assert on_b[d]["origin"]["kind"] == "pulled"
        assert on_b[d]["origin"]["source"] == f"node {a.id}"
    pulled = {p["digest"]: p for p in stats["pulled"]}
    assert digests <= set(pulled)
    assert all(pulled[d]["source"] == f"node {a.id}" and pulled[d]["bytes"] == on_b[d]["size"] for d in digests)
    assert stats["pulls"] == len(digests)  # node B's first pulls: one per distinct model
    # zerocopy ls on B says where it came from.
    listing = b.daemon.run_cli("ls")
    assert listing.returncode == 0 and f"pulled from node {a.id}" in listing.stdout
    ray.kill(actor)


def test_four_actors_starting_at_once_on_a_fresh_node_pull_once(ray_and_nodes):
    ray, nodes = ray_and_nodes
    c = nodes["c"]
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(16)])  # 64 MiB
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    wrapper = ActorWrapper(model)
    digest = wrapper._model_info[""]["digest"]
    before = c.client().stats()
    actors = [loader(ray).options(resources=c.resource).remote(wrapper) for _ in range(4)]
    ray.get([x.load.remote() for x in actors])
    after = c.client().stats()
    # One transfer for four processes: one claim committed (a second
    # transfer that ended in a dedup would count too), one begun (the log).
    assert after["pulls"] - before["pulls"] == 1
    log = (c.daemon.dir / "zerocopyd.log").read_text()
    assert log.count(f"transfer of digest={digest} (") == 1
    assert after["bytes_pulled"] - before["bytes_pulled"] == c.client().get(digest)["size"]
    data = torch.randn(2, 1024)
    with torch.no_grad():
        expected = model.eval()(data)
    for x in actors:
        assert same(ray.get(x.run.remote(data)), expected)
    # Every actor touches every weight; together they hold one copy.
    total = 0
    for x in actors:
        pid, node, _ = ray.get(x.info.remote())
        assert node == c.id
        total += segment_pss(pid, digest)
    assert 0.95 * size <= total <= 1.05 * size, (total, size)
    for x in actors:
        ray.kill(x)


class PoolActor:
    def __init__(self, actor_wrapper):
        self.pipeline = actor_wrapper.load()

    def __call__(self, batch):
        with torch.no_grad():
            out = self.pipeline(torch.tensor(batch["data"]))
        return {"predictions": out.numpy()}


def test_ray_data_pool_tasks_and_jit_on_another_node(ray_and_nodes):
    ray, nodes = ray_and_nodes
    b = nodes["b"]
    from ray.data import ActorPoolStrategy
    torch.manual_seed(21)
    pipeline = models.Pipeline()
    wrapper = ActorWrapper(pipeline)
    rows = np.random.default_rng(1).standard_normal((32, 16)).astype(np.float32)
    ds = ray.data.from_items([{"data": r} for r in rows])
    got = ds.map_batches(PoolActor, fn_constructor_kwargs={"actor_wrapper": wrapper}, batch_size=8,
                         compute=ActorPoolStrategy(size=2), resources=b.resource).take_all()
    expected = pipeline(torch.tensor(rows)).detach().numpy()
    got = np.stack([r["predictions"] for r in got])
    assert sorted(map(tuple, got.round(4))) == sorted(map(tuple, expected.round(4)))

    # A task-mode call's body (load, call) run as a task on node B.
    from ray_zerocopy._task_mode import _run_call
    torch.manual_seed(22)
    task_pipeline = models.Pipeline()
    wrapped = TaskWrapper(task_pipeline)
    data = torch.randn(3, 16)
    remote_call = ray.remote(num_cpus=1, resources=b.resource)(_run_call)
    result = ray.get(remote_call.remote(wrapped._wrapper, "cpu", False, False, "predict_proba", (data,), {}))
    assert same(result, task_pipeline.predict_proba(data))

    # A TorchScript model through JITActorWrapper.
    jit_model = torch.jit.trace(models.MLP().eval(), torch.randn(2, 16))
    actor = loader(ray).options(resources=b.resource).remote(JITActorWrapper(jit_model))
    ray.get(actor.load.remote())
    x = torch.randn(4, 16)
    assert same(ray.get(actor.run.remote(x)), jit_model(x))
    ray.kill(actor)


def test_a_chunk_altered_in_flight_is_refused_and_nothing_committed(ray_and_nodes):
    ray, nodes = ray_and_nodes
    b = nodes["b"]
    wrapper = ActorWrapper(models.MLP(64, 2048, 64))  # ~1 MiB: one chunk
    digest = wrapper._model_info[""]["digest"]
    actor = loader(ray).options(resources=b.resource,
                                runtime_env={"env_vars": {"ZEROCOPY_TEST_CORRUPT_PULL": "1"}}).remote(wrapper)
    with pytest.raises(CorruptModelError, match="altered"):
        try:
            ray.get(actor.load.remote())
        except ray.exceptions.RayTaskError as e:
            raise e.cause
    assert not b.has(digest)
    assert b.staging_files() == []
    # Unaltered, the same wrapper loads.
    clean = loader(ray).options(resources=b.resource).remote(wrapper)
    ray.get(clean.load.remote())
    assert b.has(digest)
    ray.kill(actor)
    ray.kill(clean)


def test_a_waiter_takes_over_when_the_transferring_process_dies(ray_and_nodes):
    ray, nodes = ray_and_nodes
    c = nodes["c"]
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])  # 8 MiB: 8 chunks
    wrapper = ActorWrapper(model)
    digest = wrapper._model_info[""]["digest"]
    slow = loader(ray).options(resources=c.resource,
                               runtime_env={"env_vars": {"ZEROCOPY_TEST_PULL_PAUSE_S": "60"}}).remote(wrapper)
    slow.load.remote()
    deadline = time.monotonic() + 60
    while not c.staging_files():
        assert time.monotonic() < deadline, "the slow transfer never began"
        time.sleep(0.05)
    waiter = loader(ray).options(resources=c.resource).remote(wrapper)
    waiting = waiter.load.remote()
    time.sleep(1.0)
    assert not c.has(digest)  # the waiter waits for the claimant ...
    ray.kill(slow)  # ... which dies mid-transfer
    ray.get(waiting, timeout=120)
    assert c.has(digest)
    data = torch.randn(2, 512)
    with torch.no_grad():
        assert same(ray.get(waiter.run.remote(data)), model.eval()(data))
    assert c.staging_files() == []
    ray.kill(waiter)


def _publish_on_this_node(pipeline):
    return ActorWrapper(pipeline)


def test_the_source_lost_mid_transfer_and_a_third_node_pulls_from_a_holder(ray_and_nodes, cluster):
    ray, nodes = ray_and_nodes
    _, c_, _ = cluster
    b, c, d = nodes["b"], nodes["c"], nodes["d"]
    torch.manual_seed(23)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])  # 32 MiB: 9 chunks
    # Published on node D (a task there), pulled by node B.
    wrapper = ray.get(ray.remote(num_cpus=1, resources=d.resource)(_publish_on_this_node).remote(model))
    digest = wrapper._model_info[""]["digest"]
    assert wrapper._model_info[""]["node"] == d.id
    first = loader(ray).options(resources=b.resource).remote(wrapper)
    ray.get(first.load.remote())
    assert b.has(digest)
    # Node C starts a slow pull from D; D's daemon dies and D leaves.
    slow = loader(ray).options(resources=c.resource,
                               runtime_env={"env_vars": {"ZEROCOPY_TEST_PULL_PAUSE_S": "0.3"}}).remote(wrapper)
    pending = slow.load.remote()
    deadline = time.monotonic() + 60
    while not c.staging_files():
        assert time.monotonic() < deadline, "the transfer never began"
        time.sleep(0.02)
    d.daemon.proc.kill()
    c_.remove_node(d.ray_node)
    ray.get(pending, timeout=180)  # finished from node B
    on_c = {m["digest"]: m for m in c.client().list()}
    assert on_c[digest]["origin"]["source"] == f"node {b.id}"
    x = torch.randn(3, 1024)
    with torch.no_grad():
        assert same(ray.get(slow.run.remote(x)), model.eval()(x))
    assert c.staging_files() == []
    for actor in (first, slow):
        ray.kill(actor)


def test_no_live_node_holds_it_the_error_names_the_digest_and_the_nodes(ray_and_nodes):
    ray, nodes = ray_and_nodes
    a, b = nodes["a"], nodes["b"]
    wrapper = ActorWrapper(models.MLP())
    digest = wrapper._model_info[""]["digest"]
    a.client().delete(digest, force=True)
    actor = loader(ray).options(resources=b.resource).remote(wrapper)
    with pytest.raises(ModelNotFoundError) as caught:
        try:
            ray.get(actor.load.remote())
        except ray.exceptions.RayTaskError as e:
            raise e.cause
    message = str(caught.value)
    assert digest in message and f"node {a.id[:12]}" in message and "zerocopy preload" in message
    ray.kill(actor)


DAEMONLESS_DRIVER = """
import sys, warnings, torch, ray
sys.path[:0] = sys.argv[3].split(":")
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
import models
from ray_zerocopy import ActorWrapper
torch.manual_seed(24)
model = models.MLP()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    wrapper = ActorWrapper(model)
assert any("no zerocopyd on this machine" in str(w.message) for w in caught), [str(w.message) for w in caught]

@ray.remote(num_cpus=1, resources={sys.argv[2]: 1})
def run(wrapper, x):
    return wrapper.load()(x)

x = torch.randn(2, 16)
torch.testing.assert_close(ray.get(run.remote(wrapper, x)), model.eval()(x))
print("ok", wrapper._model_info[""]["node"])
"""


def test_a_driver_without_a_daemon_publishes_through_a_task(ray_and_nodes, cluster, tmp_path):
    ray, nodes = ray_and_nodes
    _, c_, _ = cluster
    env = dict(os.environ, ZEROCOPY_SOCKET=str(tmp_path / "no-daemon.sock"), RAY_AUTH_MODE="disabled")
    done = subprocess.run([sys.executable, "-c", DAEMONLESS_DRIVER, c_.address, "node_b", os.environ["PYTHONPATH"]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    node = done.stdout.split()[-1]
    assert node in {n.id for n in nodes.values()}


def _load_by_name(name):
    import ray_zerocopy
    weights = ray_zerocopy.load_state_dict(name)
    return {k: v.clone() for k, v in weights.items()}, ray_zerocopy.stats()["recent_pulls"]


def test_a_name_preloaded_on_one_node_loads_on_another(ray_and_nodes, tmp_path):
    ray, nodes = ray_and_nodes
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    from safetensors.torch import save_file
    torch.manual_seed(25)
    weights = {"w": torch.randn(256, 256), "b": torch.randn(256)}
    save_file(weights, str(tmp_path / "m.safetensors"))
    # Preloaded with the CLI on node C only: no process of the cluster told
    # the directory about it, so node B finds the name on C's daemon.
    done = c.daemon.run_cli("preload", str(tmp_path / "m.safetensors"), "--name", "cluster-name")
    assert done.returncode == 0, done.stderr
    digest = c.client().get("cluster-name")["digest"]
    assert not b.has(digest)
    got, pulls = ray.get(ray.remote(num_cpus=1, resources=b.resource)(_load_by_name).remote("cluster-name"))
    assert set(got) == set(weights) and all(torch.equal(got[k], weights[k]) for k in weights)
    assert pulls[-1]["digest"] == digest and pulls[-1]["source"] == c.id
    # Node B now holds it under that name too (its own tag, for its own uid).
    assert b.client().get("cluster-name")["digest"] == digest
    # The directory learned the name: node A resolves it without asking every daemon.
    from ray_zerocopy import _cluster
    assert _cluster.directory().ask("resolve", "cluster-name") == digest
    got, _ = ray.get(ray.remote(num_cpus=1, resources=a.resource)(_load_by_name).remote("cluster-name"))
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    # A name no node knows is NOT_FOUND, as on one node.
    with pytest.raises(ModelNotFoundError):
        try:
            ray.get(ray.remote(num_cpus=1, resources=b.resource)(_load_by_name).remote("nobody-has-this"))
        except ray.exceptions.RayTaskError as e:
            raise e.cause


def _from_pretrained(name, ids):
    import ray_zerocopy
    model = ray_zerocopy.from_pretrained(name)
    with torch.no_grad():
        return model(ids).logits, ray_zerocopy.tokenizer(name)("hello world")["input_ids"]


def test_a_hugging_face_directory_preloaded_on_one_node_loads_on_another_with_its_files(ray_and_nodes, tmp_path):
    import transformers
    from test_hf import bpe_tokenizer
    ray, nodes = ray_and_nodes
    b, c = nodes["b"], nodes["c"]
    torch.manual_seed(26)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32,
                                                                 n_layer=1, n_head=2)).eval()
    model.save_pretrained(tmp_path / "gpt2", max_shard_size="50KB")
    bpe_tokenizer(tmp_path / "gpt2")
    done = c.daemon.run_cli("preload", str(tmp_path / "gpt2"), "--name", "hf-across")
    assert done.returncode == 0, done.stderr
    ids = torch.tensor([[1, 2, 3, 4]])
    logits, tokens = ray.get(ray.remote(num_cpus=1, resources=b.resource)(_from_pretrained).remote("hf-across", ids))
    with torch.no_grad():
        same(logits, model(ids).logits)
    assert tokens == transformers.AutoTokenizer.from_pretrained(tmp_path / "gpt2")("hello world")["input_ids"]
    assert b.client().get("hf-across")["digest"] == c.client().get("hf-across")["digest"]  # pulled, files and all


def _load_exported(name, x):
    import ray_zerocopy
    with torch.no_grad():
        return ray_zerocopy.load_exported(name).module()(x)


def test_a_torch_export_program_preloaded_on_one_node_runs_on_another(ray_and_nodes, tmp_path):
    from test_export import ConvNet
    ray, nodes = ray_and_nodes
    a, c = nodes["a"], nodes["c"]
    torch.manual_seed(27)
    x = torch.randn(2, 3, 8, 8)
    ep = torch.export.export(ConvNet().eval(), (x,))
    torch.export.save(ep, tmp_path / "conv.pt2")
    done = c.daemon.run_cli("preload", str(tmp_path / "conv.pt2"), "--name", "export-across")
    assert done.returncode == 0, done.stderr
    got = ray.get(ray.remote(num_cpus=1, resources=a.resource)(_load_exported).remote("export-across", x))
    with torch.no_grad():
        same(got, torch.export.load(tmp_path / "conv.pt2").module()(x))
    assert a.client().get("export-across")["digest"] == c.client().get("export-across")["digest"]  # the program too
