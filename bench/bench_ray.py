"""Ray measurements, one method per process (ours and the published
ray-zerocopy 0.2.0 share an import name, so each runs in a driver whose
PYTHONPATH puts its package first). Connects to the Ray instance that
bench.py started and prints one JSON line.

    bench_ray.py actor-load METHOD MIB REPEATS MODEL_FILE
        METHOD: ours (ActorWrapper.load() in a fresh actor), baseline
        (ray-zerocopy's ModelWrapper.load() in a fresh actor), by-value (the
        model as an actor argument: Ray's object store, deserialized). Ours
        and baseline also time load() to the first forward pass's output.
    bench_ray.py memory METHOD MIB N MODEL_FILE STATE_FILE
        N actors of a Ray Data ActorPoolStrategy(size=N) pool running
        map_batches, each holding the model: their PSS/RSS while all hold it,
        the PSS of the raylet (the object store lives there) and zerocopyd,
        and the object store's usage. METHOD: ours, baseline, torch-load.
"""
import json
import os
import sys
import time

import ray
import torch

import bench_model


def connect():
    env = {k: os.environ[k] for k in ("PYTHONPATH", "ZEROCOPY_SOCKET") if k in os.environ}
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env})


def wrap(method, model):
    """What the driver hands to actors for `method`."""
    import ray_zerocopy
    if method == "ours":
        return ray_zerocopy.ActorWrapper(model)
    if method == "baseline":
        assert ray_zerocopy.__version__ == "0.2.0", ray_zerocopy.__file__
        return ray_zerocopy.ModelWrapper.from_model(model, mode="actor")
    raise ValueError(method)


@ray.remote(num_cpus=0.1)
class Loader:
    def __init__(self, payload=None):
        self.payload = payload  # by-value: deserialized before __init__ runs

    def ready(self):
        return True

    def load(self, wrapper):
        """Seconds of load(), from load() to the first forward pass's
        output (what a user waits for: a cost moved out of load() counts),
        and of a second forward pass (warm: the floor under any first
        output, with the threads Ray gives this actor)."""
        import ray_zerocopy  # noqa: F401
        x = bench_model.example_input()
        t = time.perf_counter()
        self.model = wrapper.load()
        loaded = time.perf_counter()
        with torch.no_grad():
            self.model(x)
        first = time.perf_counter()
        with torch.no_grad():
            self.model(x)
        return loaded - t, first - t, time.perf_counter() - first


def actor_load(method, mib, repeats, model_file):
    model = torch.load(model_file, weights_only=False)
    seconds = []
    if method == "by-value":
        ref = ray.put(model)
        # What creating an actor costs with no model, to subtract.
        empty = []
        for _ in range(repeats):
            t = time.perf_counter()
            a = Loader.remote(None)
            ray.get(a.ready.remote())
            empty.append(time.perf_counter() - t)
            ray.kill(a)
        base = sorted(empty)[len(empty) // 2]
        for _ in range(repeats):
            t = time.perf_counter()
            a = Loader.remote(ref)
            ray.get(a.ready.remote())
            seconds.append(max(0.0, time.perf_counter() - t - base))
            ray.kill(a)
        return {"seconds": seconds, "empty_actor_seconds": base}
    wrapper = wrap(method, model)
    del model  # the wrapper holds what it needs; leave the memory to the actors
    import gc
    gc.collect()
    wrapper_ref = ray.put(wrapper)
    first_output, warm = [], []
    for _ in range(repeats):
        a = Loader.remote(None)
        ray.get(a.ready.remote())
        load, first, second = ray.get(a.load.remote(wrapper_ref))
        seconds.append(load)
        first_output.append(first)
        warm.append(second)
        ray.kill(a)
    return {"seconds": seconds, "first_output_seconds": first_output, "warm_forward_seconds": warm}


@ray.remote(num_cpus=0)
class Barrier:
    def __init__(self):
        self.pids, self.open = [], False

    def register(self, pid):
        self.pids.append(pid)

    def registered(self):
        return list(self.pids)

    def release(self):
        self.open = True

    def released(self):
        return self.open


class Holder:
    """The Ray Data UDF: loads the model in __init__, touches every weight
    with a forward pass, registers, and holds the model until released."""

    def __init__(self, method, mib, wrapper, state_file, barrier):
        if method == "torch-load":
            state = torch.load(state_file, weights_only=True)
            self.model = bench_model.factory(mib)()
            self.model.load_state_dict(state, assign=True)
        else:
            self.model = wrapper.load()
        with torch.inference_mode():
            self.model(bench_model.example_input())
        self.barrier = barrier
        ray.get(barrier.register.remote(os.getpid()))

    def __call__(self, batch):
        while not ray.get(self.barrier.released.remote()):
            time.sleep(0.05)
        return {"pid": [os.getpid()] * len(batch["id"])}


def smaps(pid):
    values = {}
    if not os.path.exists(f"/proc/{pid}/smaps_rollup"):
        return None  # gone (an actor Ray Data replaced)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values


def node_processes():
    """Ray's raylet (which holds the object store) and zerocopyd: what holds
    a model besides the actors."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv0 = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith((b"/raylet", b"/zerocopyd")):
            pids.append(int(entry))
    return pids


def object_store_bytes():
    from ray._private.internal_api import memory_summary
    text = memory_summary(stats_only=True)
    for line in text.splitlines():
        if "Plasma memory usage" in line:  # "Plasma memory usage 1024 MiB, 3 objects, ..."
            return int(float(line.split("Plasma memory usage")[1].split("MiB")[0])) * 2**20
    return None


def memory(method, mib, n, model_file, state_file):
    import threading
    barrier = Barrier.remote()
    wrapper = None
    if method != "torch-load":
        wrapper = wrap(method, torch.load(model_file, weights_only=False))
    ds = ray.data.range(n, override_num_blocks=n).map_batches(
        Holder, compute=ray.data.ActorPoolStrategy(size=n), batch_size=1, num_cpus=1.0 / n,
        fn_constructor_kwargs={"method": method, "mib": mib, "wrapper": wrapper, "state_file": state_file,
                               "barrier": barrier})
    result = {}
    done = threading.Event()

    def run():
        try:
            result["rows"] = ds.materialize().count()
        except Exception as e:  # reported in the JSON
            result["error"] = repr(e)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 600
    while len(ray.get(barrier.registered.remote())) < n and not done.is_set() and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = ray.get(barrier.registered.remote())
    mem = [m for m in (smaps(p) for p in pids) if m is not None]
    node = [m for m in (smaps(p) for p in node_processes()) if m is not None]
    out = {"actors": len(mem), "pss": sum(m.get("Pss", 0) for m in mem), "rss": sum(m.get("Rss", 0) for m in mem),
           "node_pss": sum(m.get("Pss", 0) for m in node), "object_store": object_store_bytes()}
    ray.get(barrier.release.remote())
    done.wait(600)
    if "error" in result:
        out["error"] = result["error"]
    return out


def main():
    connect()
    what, method, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if what == "actor-load":
        out = actor_load(method, mib, int(sys.argv[4]), sys.argv[5])
    else:
        out = memory(method, mib, int(sys.argv[4]), sys.argv[5], sys.argv[6])
    out.update(what=what, method=method, mib=mib)
    print(json.dumps(out), flush=True)


main()
