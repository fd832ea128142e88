"""One model's bytes to every node of a cluster at once: Ray's own broadcast
(ray.put on the driver's node, ray.get on every other node at the same
time) against ours (ModelWrapper.from_model on the driver's node,
ActorWrapper-style .load() on every other node, which pulls it through
Ray), with the link time for reference. Run as the driver on node 0 of a
simulated cluster (bench/simcluster.py), e.g.

    <venv>/bin/python bench/simcluster.py --nodes 4 --rate 2gbit -- \\
        <venv>/bin/python bench/bench_fanout.py --mib 256 --ours

With --published (a second driver on the same cluster, the published
ray-zerocopy 0.2.0 first on its PYTHONPATH): only (b), its
ModelWrapper.from_model on node 0 and .load() on every other node, which
is ray.put and ray.get of the weights.

Prints one JSON line. One receiver actor per other node, pinned by its
resource zc_node<i> (simcluster declares one per node), created and warm
(numpy, and with --ours torch and ray_zerocopy, imported; a first call
done) before any clock starts. Times are seconds from the start of the
fan-out (after ray.put / after from_model) until each node's call
returned, as the driver saw it (`done_s`), and the node's own time inside
its call (`call_s`); `max_s` is the fan-out's time, the slowest node (median over --repeats runs, after
--warmup runs that are listed but not counted: the first pull of ours
also starts Ray workers on the source node for its chunk tasks).

To measure another way of moving the bytes, write a function like
measure_ours(): something to do before the clock, then fanout(ray,
actors, submit) with `submit(i, actor) -> ObjectRef`, then a cleanup.
"""
import argparse
import json
import os
import re
import statistics
import sys
import time

MiB = 1 << 20


def connect(published: bool = False):
    """This driver's Ray; with `published`, its workers import ray_zerocopy
    from this process's PYTHONPATH (the published 0.2.0 first)."""
    import ray
    env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if published else None
    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False, configure_logging=False,
             runtime_env=env)
    return ray


def zc_nodes(ray) -> tuple[dict, int | None]:
    """{i: Ray node id} of the live nodes holding resource zc_node<i>, and
    the driver's own i (None when the driver's node has none)."""
    here = ray.get_runtime_context().get_node_id()
    nodes = {}
    for n in ray.nodes():
        if n.get("Alive"):
            for r in n.get("Resources", {}):
                if m := re.fullmatch(r"zc_node(\d+)", r):
                    nodes[int(m.group(1))] = n["NodeID"]
    mine = [i for i, nid in nodes.items() if nid == here]
    return nodes, mine[0] if mine else None


def receivers(ray, indices, ours: bool, published: bool = False) -> dict:
    """One warm actor per node index, pinned there by its zc_node<i>."""

    @ray.remote(num_cpus=1, max_restarts=0)
    class Receiver:
        def __init__(self, ours, published):
            import numpy  # noqa: F401  (imports paid before any clock)
            self.ours = ours
            if ours or published:
                import torch  # noqa: F401
                import ray_zerocopy  # noqa: F401
            if ours:
                from ray_zerocopy import _cluster, _native, _store  # noqa: F401
            self.held = None

        def where(self):
            import socket
            return ray.get_runtime_context().get_node_id(), os.environ.get("ZEROCOPY_SOCKET"), socket.gethostname()

        def get(self, refs):
            t0 = time.perf_counter()
            self.held = ray.get(refs[0])
            return {"call_s": time.perf_counter() - t0, "bytes": int(self.held.nbytes)}

        def load(self, wrapper):
            t0 = time.perf_counter()
            self.held = wrapper.load()
            out = {"call_s": time.perf_counter() - t0}
            if not self.ours:
                return out
            import ray_zerocopy
            pulls = ray_zerocopy.stats()["recent_pulls"]
            if pulls:  # where this node's pull came from, and when its chunks arrived
                p = pulls[-1]
                out.update(source=p["source"], pull_s=round(p["seconds"], 4),
                           first_chunk_s=p["first_chunk_s"] and round(p["first_chunk_s"], 4),
                           last_chunk_s=p["last_chunk_s"] and round(p["last_chunk_s"], 4),
                           dropped=[(n[:8], why[:200]) for n, why in p["dropped"]])
            return out

        def forget(self, digests=()):
            """Drops what the last call kept and removes `digests` from this
            node's daemon (so that the next run pulls again)."""
            self.held = None
            import gc
            gc.collect()
            if digests:
                from ray_zerocopy import _cluster, _native
                from ray_zerocopy.errors import ModelNotFoundError
                directory = _cluster.directory()
                for d in digests:
                    try:
                        _native.client().delete(d, force=True)
                    except ModelNotFoundError:
                        pass
                    directory.tell("remove", d, _cluster.node_id())  # or the next run tries it first

    actors = {i: Receiver.options(resources={f"zc_node{i}": 0.01}).remote(ours, published) for i in indices}
    where = ray.get([a.where.remote() for a in actors.values()], timeout=300)
    return actors, dict(zip(actors, where))


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (every process, the kernel's
    networking included) since boot: /proc/stat, all cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def fanout(ray, actors: dict, submit, timeout: float) -> dict:
    """Calls submit(i, actor) for every receiver at once (the clock starts
    just before) and waits for all; per node: done_s (as the driver saw it)
    and what the call returned. max_s: the slowest node's done_s; cpu_s:
    the CPU seconds the whole machine spent meanwhile (on a simulated
    cluster every node shares this machine's cores: a run whose cpu_s
    nears max_s x cores was bound by them, not by the links)."""
    cpu0 = busy_cpu_s()
    t0 = time.perf_counter()
    pending = {submit(i, a): i for i, a in actors.items()}
    per_node = {}
    deadline = t0 + timeout
    while pending:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"nodes {sorted(pending.values())} still busy after {timeout:.0f} s")
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        now = time.perf_counter() - t0
        for ref in ready:
            i = pending.pop(ref)
            per_node[i] = dict(ray.get(ref), done_s=round(now, 4))
    for v in per_node.values():
        v["call_s"] = round(v["call_s"], 4)
    return {"per_node": dict(sorted(per_node.items())), "max_s": max(v["done_s"] for v in per_node.values()),
            "cpu_s": round(busy_cpu_s() - cpu0, 2)}


def measure_ray(ray, actors, nbytes: int, repeats: int, timeout: float) -> list:
    """(a) Ray's broadcast: ray.put on the driver, ray.get everywhere at once."""
    import numpy as np
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        ref = ray.put(np.full(nbytes, r + 1, dtype=np.uint8))  # fresh bytes: no node has a copy
        put_s = time.perf_counter() - t0
        run = fanout(ray, actors, lambda i, a: a.get.remote([ref]), timeout)
        run["put_s"] = round(put_s, 4)
        runs.append(run)
        ray.get([a.forget.remote() for a in actors.values()])
        ref = None  # the owner's reference: every copy goes
    return runs


def make_model(mib: int):
    """A stack of float32 Linear(2048, 2048) layers (16 MiB each) of about
    `mib` MiB."""
    import torch
    torch.manual_seed(0)
    layers = max(1, round(mib / 16))
    with torch.no_grad():
        return torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(layers)])


def measure_ours(ray, actors, mib: int, repeats: int, timeout: float) -> tuple[list, dict]:
    """(c) ours: ModelWrapper.from_model on the driver's node (its daemon),
    then every other node's actor calls .load() at once: its daemon lacks
    the model, so ray_zerocopy pulls it through Ray. Between runs the
    receivers' daemons forget it."""
    from ray_zerocopy import ModelWrapper
    model = make_model(mib)
    t0 = time.perf_counter()
    wrapper = ModelWrapper.from_model(model)
    publish_s = time.perf_counter() - t0
    info = wrapper._model_info[""]
    del model
    digests = [info["digest"]]
    ray.get([a.forget.remote(digests) for a in actors.values()])
    runs = []
    for _ in range(repeats):
        run = fanout(ray, actors, lambda i, a: a.load.remote(wrapper), timeout)
        runs.append(run)
        ray.get([a.forget.remote(digests) for a in actors.values()])
    return runs, {"bytes": info["bytes"], "digest": info["digest"], "publish_s": round(publish_s, 4)}


def measure_published(ray, actors, mib: int, repeats: int, timeout: float) -> tuple[list, dict]:
    """(b) the published ray-zerocopy 0.2.0 (this process and its workers
    import it: connect(published=True)): ModelWrapper.from_model(model,
    mode="actor") on the driver's node (ray.put of its weights), then
    every other node's actor calls .load() at once (ray.get of them). A
    fresh wrapper each run: no node holds a copy of its objects yet."""
    import ray_zerocopy
    assert ray_zerocopy.__version__ == "0.2.0", ray_zerocopy.__file__
    runs, nbytes = [], 0
    for _ in range(repeats):
        model = make_model(mib)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        t0 = time.perf_counter()
        wrapper = ray_zerocopy.ModelWrapper.from_model(model, mode="actor")
        publish_s = time.perf_counter() - t0
        model = None
        run = fanout(ray, actors, lambda i, a: a.load.remote(wrapper), timeout)
        run["publish_s"] = round(publish_s, 4)
        runs.append(run)
        ray.get([a.forget.remote() for a in actors.values()])
        wrapper = None  # its object refs: every copy goes
    return runs, {"bytes": nbytes}


def summary(runs: list, warmup: int) -> dict:
    """Median, min and max of the slowest node's time over the runs after
    the first `warmup` (which are listed too, marked)."""
    for r in runs[:warmup]:
        r["warmup"] = True
    maxes = [r["max_s"] for r in runs[warmup:]]
    return {"max_s_median": round(statistics.median(maxes), 4), "max_s_min": round(min(maxes), 4),
            "max_s_max": round(max(maxes), 4), "runs": runs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rate-bits", type=float, default=float(os.environ.get("SIMCLUSTER_RATE_BITS", 0)) or None,
                    help="each link's rate in bits/s, for the link time (default: $SIMCLUSTER_RATE_BITS)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0,
                    help="runs before the measured ones, reported but not counted: the first pull also starts "
                         "Ray workers on the source node for its chunk tasks")
    ap.add_argument("--ours", action="store_true", help="also (c): ModelWrapper publish + load() on every node")
    ap.add_argument("--published", action="store_true",
                    help="only (b): the published ray-zerocopy 0.2.0, first on this process's PYTHONPATH")
    ap.add_argument("--no-ray", action="store_true", help="skip (a)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one fan-out may take at most")
    args = ap.parse_args()

    t_init = time.perf_counter()
    ray = connect(args.published)
    nodes, me = zc_nodes(ray)
    others = sorted(i for i in nodes if i != me)
    if not others:
        raise SystemExit(f"no other node with a zc_node<i> resource (nodes: {nodes}, driver on {me})")
    actors, where = receivers(ray, others, args.ours and not args.published, args.published)
    out = {"driver_node": me, "receivers": others, "mib": args.mib, "rate_bits": args.rate_bits,
           "node_ids": {i: where[i][0] for i in others}, "driver_node_id": ray.get_runtime_context().get_node_id(),
           "setup_s": round(time.perf_counter() - t_init, 2)}
    nbytes = args.mib * MiB
    if args.published:
        runs, info = measure_published(ray, actors, args.mib, args.warmup + args.repeats, args.timeout)
        out["published"] = dict(summary(runs, args.warmup), **info)
        print(json.dumps(out), flush=True)
        return
    if not args.no_ray:
        runs = measure_ray(ray, actors, nbytes, args.warmup + args.repeats, args.timeout)
        out["ray"] = dict(summary(runs, args.warmup), bytes=nbytes)
    if args.ours:
        runs, info = measure_ours(ray, actors, args.mib, args.warmup + args.repeats, args.timeout)
        out["ours"] = dict(summary(runs, args.warmup), **info)
    if args.rate_bits:
        link_s = nbytes * 8 / args.rate_bits
        out["link_s"] = round(link_s, 4)
        for k in ("ray", "ours"):
            if k in out:
                out[f"{k}_link_times"] = round(out[k]["max_s_median"] / link_s, 2)
    if "ray" in out and "ours" in out:
        out["ours_over_ray"] = round(out["ours"]["max_s_median"] / out["ray"]["max_s_median"], 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
