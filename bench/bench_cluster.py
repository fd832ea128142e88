"""bench section 7, across nodes: a two-node Ray cluster on this machine
(ray.cluster_utils.Cluster, a zerocopyd per node), run by bench.py after
its own Ray instance has stopped (one cluster at a time).

For each size, side by side in one run:
- ours: an actor on node B (warm: torch and ray_zerocopy imported) calls
  ActorWrapper.load() for a model published on node A, which B's daemon
  lacks: the pull through Ray (chunks of 32 MiB, 2 in flight), the daemon's
  digest check at commit, and the map;
- ray.get: the same actor fetches the same number of bytes that an actor
  on node A put into its object store (one numpy array), a plain ray.get.
Between runs B's daemon forgets the model and A's actor puts afresh. A
thread samples the cluster's object store use (memory_summary) during each
run: its peak above the level before the run (for ray.get, node A's copy
was there before: the peak is node B's copy).

    bench_cluster.py --build DIR --sizes 256 1024 --repeats 3   (prints one JSON line)
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1 (see tests/python/test_cluster.py)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
HERE = Path(__file__).resolve().parent
MiB = 2**20


def object_store_bytes():
    from ray._private.internal_api import memory_summary
    for line in memory_summary(stats_only=True).splitlines():
        if "Plasma memory usage" in line:  # "Plasma memory usage 1024 MiB, 3 objects, ..."
            return int(float(line.split("Plasma memory usage")[1].split("MiB")[0])) * MiB
    return 0


class Peak:
    """The highest object store use above its level at entry, sampled."""

    def __enter__(self):
        self.base = object_store_bytes()
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, object_store_bytes() - self.base)
            self.done.wait(0.05)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        # Once more with the result still held (a ray.get's object is in
        # node B's store until the actor drops it): a short run may fall
        # between samples.
        self.peak = max(self.peak, object_store_bytes() - self.base)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    build = Path(args.build).resolve()
    sys.path[:0] = [str(build / "python"), str(HERE)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(build / "python"), str(HERE), os.environ.get("PYTHONPATH", "")])
    from bench import Daemon  # the same daemon harness as the other sections
    import numpy as np
    import ray
    import torch
    from ray.cluster_utils import Cluster

    biggest = max(args.sizes) * MiB
    shm = Path(tempfile.mkdtemp(prefix="zc-bench-cluster-", dir="/dev/shm"))
    daemons = {n: Daemon(build, str(shm / n), f"{3 * biggest // MiB + 256}M") for n in "ab"}
    os.environ["ZEROCOPY_SOCKET"] = daemons["a"].socket

    def node(n):
        return dict(node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=4,
                    object_store_memory=biggest + 512 * MiB, resources={f"node_{n}": 100},
                    env_vars={"ZEROCOPY_SOCKET": daemons[n].socket, "PYTHONPATH": os.environ["PYTHONPATH"]})

    cluster = Cluster(initialize_head=True, head_node_args=node("a"))
    cluster.add_node(**node("b"))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    from ray_zerocopy import ActorWrapper, _native

    @ray.remote(num_cpus=1, resources={"node_a": 1})
    class Holder:
        def put(self, nbytes):
            self.ref = ray.put(np.ones(nbytes, dtype=np.uint8))
            return [self.ref]

        def drop(self):
            self.ref = None

    @ray.remote(num_cpus=1, resources={"node_b": 1})
    class Loader:
        def __init__(self):
            import ray_zerocopy  # noqa: F401  (warm: imports paid before the clock)
            self.held = None

        def ours(self, wrapper):
            t0 = time.perf_counter()
            self.held = wrapper.load()
            return time.perf_counter() - t0

        def raw(self, refs):
            t0 = time.perf_counter()
            self.held = ray.get(refs[0])
            return time.perf_counter() - t0

        def drop(self):
            self.held = None

    holder, loader = Holder.remote(), Loader.remote()
    ray.get(loader.drop.remote())
    b = _native.client(daemons["b"].socket)
    out = {"sizes": {}}
    try:
        for mib in args.sizes:
            layers = max(1, mib // 16)  # Linear(2048, 2048): 16 MiB each
            model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(layers)])
            wrapper = ActorWrapper(model)
            digest = wrapper._model_info[""]["digest"]
            nbytes = wrapper._model_info[""]["bytes"]
            del model
            runs = {"ours": [], "ray_get": [], "ours_peak": [], "ray_get_peak": []}
            for _ in range(args.repeats):
                with Peak() as peak:
                    runs["ours"].append(ray.get(loader.ours.remote(wrapper)))
                runs["ours_peak"].append(peak.peak)
                ray.get(loader.drop.remote())
                b.delete(digest, force=True)
                refs = ray.get(holder.put.remote(nbytes))
                with Peak() as peak:
                    runs["ray_get"].append(ray.get(loader.raw.remote(refs)))
                runs["ray_get_peak"].append(peak.peak)  # node B's copy (node A's was there before)
                ray.get(loader.drop.remote())
                ray.get(holder.drop.remote())
                del refs
            ours, theirs = statistics.median(runs["ours"]), statistics.median(runs["ray_get"])
            out["sizes"][mib] = {
                "bytes": nbytes, "ours_s": runs["ours"], "ray_get_s": runs["ray_get"],
                "ours_gib_s": nbytes / ours / 2**30, "ray_get_gib_s": nbytes / theirs / 2**30,
                "throughput_ratio": theirs / ours,
                "ours_store_peak": max(runs["ours_peak"]), "ray_get_store_peak": max(runs["ray_get_peak"]),
            }
            _native.client(daemons["a"].socket).delete(digest, force=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        for d in daemons.values():
            d.stop()
        shutil.rmtree(shm, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
