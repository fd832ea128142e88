"""The driver of test_simcluster.py, run on node 0 of a simulated
multi-host cluster (bench/simcluster.py). It speaks to the test through
one JSON object per line: on stdout what it did and measured, on stdin
what the test did in between (a node it killed).

    simcluster_driver.py fanout|corrupt|join|publisher|kill MIB
"""
import json
import os
import sys
import time

import ray
import torch

import ray_zerocopy
from ray_zerocopy import ActorWrapper, _cluster

BAD = int(os.environ["SIMCLUSTER_CORRUPT_NODE"])  # the node that serves altered chunks (the test's node_env)
PULLERS = range(1, BAD)  # the sound nodes the cluster started with, but node 0


def say(**what):
    print(json.dumps(what), flush=True)


def model(mib: int, seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(mib)])  # 1 MiB a layer


@ray.remote(num_cpus=0.01)
class Loader:
    def __init__(self):
        self.model = None

    def node(self):
        return ray.get_runtime_context().get_node_id()

    def load(self, wrapper):
        t0 = time.monotonic()
        try:
            self.model = wrapper.load()
        except Exception as e:  # the test reads the error and this process's pulls
            return {"error": f"{type(e).__name__}: {e}", "pulls": ray_zerocopy.stats()["recent_pulls"]}
        return {"seconds": time.monotonic() - t0, "pulls": ray_zerocopy.stats()["recent_pulls"]}

    def run(self, x):
        with torch.no_grad():
            return self.model(x)


def loaders(nodes, env=None):
    actors = {i: Loader.options(resources={f"zc_node{i}": 0.01},
                                runtime_env={"env_vars": env} if env else None).remote() for i in nodes}
    ids = dict(zip(actors, ray.get([a.node.remote() for a in actors.values()])))  # started and warm
    return actors, ids


def sources(digest):
    return _cluster.directory().ask("sources", digest) or {}


def check_outputs(m, actors, results):
    x = torch.randn(2, 512)
    with torch.no_grad():
        want = m.eval()(x)
    for i, a in actors.items():
        if "error" not in results[i]:
            torch.testing.assert_close(ray.get(a.run.remote(x)), want)


def fanout(mib):
    """Every other sound node loads a model published here, at once."""
    m = model(mib, 1)
    wrapper = ActorWrapper(m)
    digest = wrapper._model_info[""]["digest"]
    actors, ids = loaders(PULLERS)
    say(event="ready", digest=digest, ids=ids, node0=ray.get_runtime_context().get_node_id())
    t0 = time.monotonic()
    results = dict(zip(actors, ray.get([a.load.remote(wrapper) for a in actors.values()], timeout=300)))
    seconds = time.monotonic() - t0
    check_outputs(m, actors, results)
    say(event="done", seconds=seconds, results=results, sources=sources(digest))


def corrupt(mib):
    """Node BAD serves every chunk altered. It pulls a model first (its own
    pull is sound); the publisher's copy is then deleted, so node 1's pull
    finds node BAD the only holder: caught at the chunk, nothing committed.
    Published again here, node 1 gets it from node 0."""
    bad = BAD
    m = model(mib, 2)
    wrapper = ActorWrapper(m)
    digest = wrapper._model_info[""]["digest"]
    actors, ids = loaders([1, bad])
    first = ray.get(actors[bad].load.remote(wrapper), timeout=300)
    ray_zerocopy._native.client().delete(digest, force=True)
    refused = ray.get(actors[1].load.remote(wrapper), timeout=300)
    say(event="refused", digest=digest, ids=ids, refused=refused)
    json.loads(sys.stdin.readline())  # the test looked at node 1's daemon
    wrapper = ActorWrapper(m)  # published here again
    again = ray.get(actors[1].load.remote(wrapper), timeout=300)
    check_outputs(m, {1: actors[1]}, {1: again})
    say(event="done", digest=digest, ids=ids, first=first, again=again, node0=ray.get_runtime_context().get_node_id())


def kill(mib):
    """Every other sound node loads at once, slowly; the test kills a relay
    in the middle (a node that pulls from node 0 and serves another): its
    pullers carry on from other holders."""
    m = model(mib, 3)
    wrapper = ActorWrapper(m)
    digest = wrapper._model_info[""]["digest"]
    actors, ids = loaders(PULLERS, env={"ZEROCOPY_TEST_PULL_PAUSE_S": "0.25"})
    node0 = ray.get_runtime_context().get_node_id()
    pending = {i: a.load.remote(wrapper) for i, a in actors.items()}
    deadline = time.monotonic() + 60
    relay = None
    while relay is None and time.monotonic() < deadline:
        s = sources(digest)
        served = {v["source"] for v in s.values() if v["source"] not in (None, node0)}
        relay = next((n for n, v in s.items() if v["source"] == node0 and n in served), None)
        time.sleep(0.05)
    index = next(i for i, n in ids.items() if n == relay)
    say(event="kill", node=index, sources=s)
    json.loads(sys.stdin.readline())  # {"killed": index}
    results = {}
    for i, ref in pending.items():
        if i == index:
            continue
        results[i] = ray.get(ref, timeout=300)
    check_outputs(m, {i: a for i, a in actors.items() if i != index}, results)
    say(event="done", digest=digest, ids=ids, relay=index, results=results)


def join(mib):
    """Nodes 1 and 2 load at once, slowly; meanwhile the test adds a node,
    whose actor then loads too: it joins the fan-out under way."""
    m = model(mib, 4)
    wrapper = ActorWrapper(m)
    digest = wrapper._model_info[""]["digest"]
    actors, ids = loaders(PULLERS, env={"ZEROCOPY_TEST_PULL_PAUSE_S": "0.4"})
    pending = {i: a.load.remote(wrapper) for i, a in actors.items()}
    say(event="add")
    new = json.loads(sys.stdin.readline())["added"]
    late, late_ids = loaders([new])
    t0 = time.monotonic()
    joined = ray.get(late[new].load.remote(wrapper), timeout=300)
    results = {i: ray.get(ref, timeout=300) for i, ref in pending.items()}
    results[new] = joined
    still_pulling = [i for i, r in results.items() if i != new]
    check_outputs(m, {**actors, **late}, results)
    say(event="done", digest=digest, ids={**ids, **late_ids}, results=results, new=new,
        joined_after_s=time.monotonic() - t0, others=still_pulling, node0=ray.get_runtime_context().get_node_id())


@ray.remote(num_cpus=0.01)
def publish(mib: int, seed: int):
    """A model published on the node this task runs on: the model, its
    wrapper, the node and the model's size in bytes."""
    m = model(mib, seed)
    wrapper = ActorWrapper(m)
    digest = wrapper._model_info[""]["digest"]
    size = next(x["size"] for x in ray_zerocopy._native.client().list() if x["digest"] == digest)
    return m, wrapper, ray.get_runtime_context().get_node_id(), size


def publisher(mib):
    """A model published on a node the test adds (P) is loaded at once by
    nodes 1 and 2, slowly, each straight from P (a chain of one each:
    ZEROCOPY_PULL_MAX_DEPTH=1), so their chains start apart. Once the
    chunks they hold between them make up the whole model, and before
    either finished, the test kills node P: each finishes from the other."""
    say(event="add")
    p = json.loads(sys.stdin.readline())["added"]
    m, wrapper, node, size = ray.get(publish.options(resources={f"zc_node{p}": 0.01}).remote(mib, 5), timeout=120)
    digest = wrapper._model_info[""]["digest"]
    actors, ids = loaders(PULLERS, env={"ZEROCOPY_TEST_PULL_PAUSE_S": "0.4", "ZEROCOPY_PULL_MAX_DEPTH": "1"})
    ids[p] = node
    pending = {i: a.load.remote(wrapper) for i, a in actors.items()}
    chunk = int(os.environ["ZEROCOPY_PULL_CHUNK_BYTES"])
    chunks = -(-size // chunk)
    deadline = time.monotonic() + 120
    while True:
        s = sources(digest)
        pulling = {n: set(v["have"]) for n, v in s.items() if n != ids[p] and not v["complete"]}
        finished = [n for n, v in s.items() if n != ids[p] and v["complete"]]
        if finished or time.monotonic() > deadline:
            index = {n: i for i, n in ids.items()}
            say(event="missed", chunks=chunks, sources={index.get(n, n): v for n, v in s.items()})
            return
        if len(pulling) == len(PULLERS) and len(set().union(*pulling.values())) == chunks:
            break
        time.sleep(0.05)
    say(event="kill", node=p, sources=s)
    json.loads(sys.stdin.readline())  # {"killed": p}
    results = {i: ray.get(ref, timeout=300) for i, ref in pending.items()}
    check_outputs(m, actors, results)
    say(event="done", digest=digest, ids=ids, publisher=p, held=s, chunks=chunks, results=results,
        after=sources(digest))


if __name__ == "__main__":
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False)
    {"fanout": fanout, "corrupt": corrupt, "join": join, "publisher": publisher,
     "kill": kill}[sys.argv[1]](int(sys.argv[2]))
