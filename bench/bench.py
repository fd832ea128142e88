"""`make bench` / `make bench-quick`: zerocopy against the alternatives, side
by side in one run, on the same weights (DESIGN.md's targets; README
"Performance" shows a full run).

Starts zerocopyd on a temporary socket and segment directory (and, where
the machine allows, a second one on a huge-page tmpfs) and a local Ray
instance (127.0.0.1, no dashboard, usage stats off), then measures:

 1. load time until the model is usable, in a fresh process and in a fresh
    Ray actor: our ActorWrapper.load() and load_state_dict(), ray-zerocopy
    0.2.0's ModelWrapper.load(), the model passed by value to an actor,
    torch.load from page cache, and the C++ client's map alone;
 2. memory of N actors (a Ray Data actor pool running map_batches) holding
    the model: sum of PSS and RSS, and Ray's object store;
 3. first forward pass after load against a warm one: 4 KiB pages,
    MAP_POPULATE, huge-page segments;
 4. publish throughput: Python ModelWrapper.from_model, CLI preload, against
    memcpy into fresh shared memory and XXH3 alone;
 5. GetModel round trip at 1, 16 and 64 concurrent clients;
 6. GPU (only where a GPU exists): attaching to the daemon's shared device
    copy against .to("cuda") in a fresh process, and device memory with 1
    and 4 processes holding the model;
 7. across nodes (bench_cluster.py, a two-node Ray cluster of its own): time
    for a node that lacks the model to get it, against a plain ray.get of
    the same bytes, and the object store's peak meanwhile.
 8. fan-out on a simulated multi-host cluster (simcluster.py: a network
    namespace and a rate-limited link per node; bench_fanout.py as the
    driver): time until every node holds a model published on node 0, ours
    (relayed pulls) against Ray's broadcast (ray.get of the same bytes on
    every node at once), at 4 and 8 nodes; fanout_model.py fits a model of
    both to these runs and projects it to 50 and 500 nodes. Skipped, with
    the reason, without root, `ip` or `tc`.
 9. a Hugging Face model in a fresh process (bench_hf.py): from_pretrained
    of ours against transformers' own, safetensors load_file +
    load_state_dict, runai-model-streamer and fastsafetensors; 4 processes'
    PSS.

Each number is the median of several runs, with min and max, and the ratio
against ours. Writes results.json, results.md and PNG plots to --out.

    bench.py [--quick] [--build build] [--out DIR]
    bench.py --gpu-only [--build build] [--out DIR]   section 6 alone (no Ray needed)
"""
import argparse
import json
import os
import pickle
import platform
import shutil
import signal
import socket as socketlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GiB, MiB = 2**30, 2**20


_T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - _T0:5.0f} s]", *a, file=sys.stderr, flush=True)


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def machine():
    info = {"kernel": platform.release(), "cores": os.cpu_count(), "python": platform.python_version()}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("MemTotal", "HugePages_Total", "Hugepagesize")):
                k, v = line.split(":")
                info[k] = v.strip()
    for name in ("enabled", "shmem_enabled"):
        p = Path("/sys/kernel/mm/transparent_hugepage") / name
        info[f"thp_{name}"] = p.read_text().strip() if p.exists() else "absent"
    import torch
    info.update(torch=torch.__version__)
    try:
        import ray
        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = "absent"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GiB, 1)
    return info


class Daemon:
    def __init__(self, build, segment_dir, budget):
        self.dir = Path(tempfile.mkdtemp(prefix="zc-bench-"))
        self.socket = str(self.dir / "zerocopyd.sock")
        self.log = open(self.dir / "zerocopyd.log", "w")
        self.proc = subprocess.Popen([str(build / "daemon/zerocopyd"), "--socket", self.socket, "--segment-dir",
                                      segment_dir, "--host-budget", budget, "--log-level", "warn",
                                      "--metrics-address", "off"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.cli = str(build / "client/cli/zerocopy")
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"zerocopyd did not start: {(self.dir / 'zerocopyd.log').read_text()}")
            try:
                with socketlib.socket(socketlib.AF_UNIX) as s:
                    s.connect(self.socket)
                return
            except OSError:
                time.sleep(0.05)

    def run(self, *args):
        r = subprocess.run([self.cli, "--socket", self.socket, "--json", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"zerocopy {' '.join(args)}: {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


# The rows measured over the segments' file system that the Debian package
# sets up by default are labelled with this.
from report import HUGE  # noqa: E402


class Bench:
    def __init__(self, args):
        self.args = args
        self.build = Path(args.build).resolve()
        sys.path.insert(0, str(self.build / "python"))  # our package, as the build places it
        self.python = sys.executable
        self.tmp = Path(tempfile.mkdtemp(prefix="zc-bench-", dir=args.tmp))
        self.shm = Path(tempfile.mkdtemp(prefix="zc-bench-", dir="/dev/shm"))
        self.daemon = Daemon(self.build, str(self.shm / "segments"), "20G")
        self.huge = None
        self.huge_note = ""
        self.baseline = Path(sys.executable).parent.parent / "baseline-ray-zerocopy"
        self.env_ours = dict(os.environ, ZEROCOPY_SOCKET=self.daemon.socket, RAY_USAGE_STATS_ENABLED="0",
                             PYTHONPATH=os.pathsep.join([str(self.build / "python"), str(HERE)]))
        self.env_baseline = dict(self.env_ours, PYTHONPATH=os.pathsep.join([str(self.baseline), str(HERE)]))
        os.environ.update(ZEROCOPY_SOCKET=self.daemon.socket)
        self.results = {"quick": args.quick, "machine": machine(), "sizes_mib": args.sizes}
        self.ray_started = False

    # -- helpers -----------------------------------------------------------

    def worker(self, *argv, env=None, script="bench_worker.py"):
        r = subprocess.run([self.python, str(HERE / script), *map(str, argv)], env=env or self.env_ours,
                           capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
            raise RuntimeError(f"{script} {' '.join(map(str, argv))} failed ({how}"
                               f"{': out of memory?' if r.returncode == -9 else ''}):\n{r.stderr[-4000:]}")
        lines = [line for line in r.stdout.splitlines() if line.startswith("{")]  # Ray Data logs to stdout too
        if not lines:
            raise RuntimeError(f"{script} {' '.join(map(str, argv))} printed no result:\n{r.stdout[-2000:]}")
        return json.loads(lines[-1])

    def start_ray(self):
        """A local Ray instance owned by this process; the per-method drivers
        (bench_ray.py) join it by its address."""
        import ray
        ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
        # "auto": the instance this process started (Ray finds it, and its
        # auth token, through its session files).
        for env in (self.env_ours, self.env_baseline):
            env["RAY_ADDRESS"] = "auto"
        self.ray_started = True

    def stop(self):
        if self.ray_started:
            import ray
            ray.shutdown()
        self.daemon.stop()
        if self.huge:
            self.huge.stop()
            subprocess.run(["umount", str(self.huge_mount)], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    def start_huge_daemon(self):
        self.huge_mount = self.tmp / "huge"
        self.huge_mount.mkdir()
        # The options of the package's dev-shm-zerocopy.mount (huge=within_size).
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=within_size,size=8G", "tmpfs", str(self.huge_mount)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.huge_note = ("huge-page segments not measured: mounting a huge=within_size tmpfs failed "
                              f"({r.stderr.strip()})")
            return
        self.huge = Daemon(self.build, str(self.huge_mount / "segments"), "6G")

    # -- the model files ---------------------------------------------------

    def prepare(self, mib):
        import torch
        from safetensors.torch import save_file
        import bench_model
        log(f"bench: building the {mib} MiB model")
        model = bench_model.build(mib)
        files = {"module": self.tmp / f"model-{mib}.module.pt", "state": self.tmp / f"model-{mib}.pt",
                 "safetensors": self.tmp / f"model-{mib}.safetensors"}
        torch.save(model, files["module"])
        torch.save(model.state_dict(), files["state"])
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files["safetensors"]))
        import ray_zerocopy
        t = time.perf_counter()
        wrapper = ray_zerocopy.ActorWrapper(model)
        publish = time.perf_counter() - t
        files["wrapper"] = self.tmp / f"model-{mib}.wrapper.pkl"
        files["wrapper"].write_bytes(pickle.dumps(wrapper))
        info = next(iter(wrapper._model_info.values()))
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return model, files, info["digest"], nbytes, publish

    # -- 1. load time --------------------------------------------------------

    def load_times(self, mib, files, digest):
        r = self.args.repeats
        out = {}
        log(f"bench: load time, {mib} MiB, {r} runs each")
        out["ours ActorWrapper.load()"] = [self.worker("ours-load", files["wrapper"])["seconds"] for _ in range(r)]
        out["ours load_state_dict()"] = [self.worker("ours-state-dict", digest, mib)["seconds"] for _ in range(r)]
        out["torch.load (page cache)"] = [self.worker("torch-load", files["state"], mib)["seconds"] for _ in range(r)]
        cpp = []
        for _ in range(r):
            p = subprocess.run([str(self.build / "client/cpp/zerocopy_map_worker"), "--model", digest, "--socket",
                                self.daemon.socket], capture_output=True, text=True, check=True)
            cpp.append(json.loads(p.stdout)["load_ms"] / 1000)
        out["ours C++ map alone"] = cpp
        # A fresh actor per run; this 2-core machine moves one run by +-30%:
        # medians of 4 (bench-quick) and 6 (make bench).
        ray_runs = max(4, r + 1)
        methods = [("ours", "ours ActorWrapper.load() in a Ray actor", self.env_ours),
                   ("baseline", "ray-zerocopy 0.2.0 load() in a Ray actor", self.env_baseline),
                   ("by-value", "model by value to a Ray actor", self.env_ours)]
        if self.huge and mib <= self.args.detail_mib:
            # The package's default: segments on its huge=within_size tmpfs.
            methods.insert(1, ("ours", f"ours ActorWrapper.load() in a Ray actor, {HUGE}",
                               dict(self.env_ours, ZEROCOPY_SOCKET=self.huge.socket)))
        for method, label, env in methods:
            first_label = label.replace("load() in a", "load() to first output in a")
            if method == "by-value" and mib > self.args.by_value_max_mib:
                continue
            try:
                res = self.worker("actor-load", method, mib, ray_runs, files["module"], env=env, script="bench_ray.py")
                out[label] = res["seconds"]
                if "first_output_seconds" in res:
                    out[first_label] = res["first_output_seconds"]
                    out[label.replace("load() in a", "warm forward pass in a")] = res["warm_forward_seconds"]
            except Exception as e:  # reported; the other methods still run
                log(f"bench: {label}, {mib} MiB failed: {str(e)[-500:]}")
                self.results.setdefault("errors", {})[f"{label} {mib} MiB"] = str(e)[-2000:]
        return {k: summary(v) for k, v in out.items()}

    def jit_load(self):
        """A TorchScript model with control flow (bench_model.Gated, ~4 MiB)
        in a fresh process: JITModelWrapper.load() against torch.jit.load of
        its file (from the page cache)."""
        import bench_model
        import ray_zerocopy
        import torch
        module = bench_model.scripted()
        path = self.tmp / "gated.pt"
        torch.jit.save(module, str(path))
        wrapper = self.tmp / "gated-wrapper.pkl"
        wrapper.write_bytes(pickle.dumps(ray_zerocopy.JITActorWrapper(module)))
        r = 3 * self.args.repeats
        ours = [self.worker("jit-ours", wrapper) for _ in range(r)]
        theirs = [self.worker("jit-torch", path) for _ in range(r)]
        if {x["output_sum"] for x in ours} != {x["output_sum"] for x in theirs}:
            raise RuntimeError("the two loads give different outputs")
        res = {"ours JITActorWrapper.load()": summary([x["seconds"] for x in ours]),
               "torch.jit.load(file)": summary([x["seconds"] for x in theirs])}
        res["ratio"] = res["ours JITActorWrapper.load()"]["median"] / res["torch.jit.load(file)"]["median"]
        return res

    def many_tensors(self, count=10000):
        """load_state_dict of a model of `count` small tensors in a fresh
        process: the cost per tensor, against torch.load and safetensors'
        load_file of the same tensors from the page cache."""
        import torch
        from safetensors.torch import save_file
        from ray_zerocopy import _store
        state = {f"layers.{i}.weight": torch.randn(64) for i in range(count)}
        files = {"torch": self.tmp / "many.pt", "safetensors": self.tmp / "many.safetensors"}
        torch.save(state, files["torch"])
        save_file(state, str(files["safetensors"]))
        digest = _store.publish(state, socket=self.daemon.socket)["digest"]
        r = 3 * self.args.repeats
        res = {"tensors": count}
        for label, argv in (("ours load_state_dict()", ["tensors-ours", digest]),
                            ("torch.load (page cache)", ["tensors-torch", files["torch"]]),
                            ("safetensors load_file (page cache)", ["tensors-safetensors", files["safetensors"]])):
            runs = [self.worker(*argv) for _ in range(r)]
            if {x["tensors"] for x in runs} != {count}:
                raise RuntimeError(f"{label} gave {runs[0]['tensors']} tensors, not {count}")
            res[label] = summary([x["seconds"] for x in runs])
        self.daemon.run("rm", "--force", digest)
        for f in files.values():
            f.unlink()
        return res

    # -- 2. memory -------------------------------------------------------------

    def memory(self, mib, files):
        out = {}
        for method, env in (("ours", self.env_ours), ("baseline", self.env_baseline), ("torch-load", self.env_ours)):
            for n in self.args.actors:
                log(f"bench: memory, {method}, {n} actors")
                try:
                    res = self.worker("memory", method, mib, n, files["module"], files["state"], env=env,
                                      script="bench_ray.py")
                except Exception as e:
                    log(f"bench: memory, {method}, {n} actors failed: {e}")
                    self.results.setdefault("errors", {})[f"memory {method} {n}"] = str(e)[-2000:]
                    continue
                out.setdefault(method, {})[n] = res
        return out

    # -- 3. first forward ------------------------------------------------------

    def first_forward(self, mib, files, digest):
        out = {}
        r = self.args.repeats
        for label, argv, env in (("4 KiB pages", [digest, mib], self.env_ours),
                                 ("MAP_POPULATE", [digest, mib, "populate"], self.env_ours)):
            out[label] = [self.worker("forward", *argv, env=env) for _ in range(r)]
        if self.huge:
            info = self.huge.run("preload", str(files["safetensors"]))
            env = dict(self.env_ours, ZEROCOPY_SOCKET=self.huge.socket)
            out["huge pages"] = [self.worker("forward", info["digest"], mib, env=env) for _ in range(r)]
            out["huge pages + MAP_POPULATE"] = [self.worker("forward", info["digest"], mib, "populate", env=env)
                                                for _ in range(r)]
            self.huge.run("rm", info["digest"])
        return {k: {f: summary([x[f] for x in v]) for f in ("load_seconds", "first_seconds", "warm_seconds")}
                for k, v in out.items()}

    # -- 4. publish --------------------------------------------------------------

    def publish(self, mib, model, files, nbytes):
        import ray_zerocopy
        r = self.args.repeats
        out = {"python ModelWrapper.from_model": [], "CLI preload (safetensors)": [], "CLI preload (torch.save)": []}
        for _ in range(r):
            t = time.perf_counter()
            w = ray_zerocopy.ModelWrapper.from_model(model)
            out["python ModelWrapper.from_model"].append(time.perf_counter() - t)
            self.daemon.run("rm", "--force", next(iter(w._model_info.values()))["digest"])
        # Into /dev/shm, and into the package's huge-page tmpfs (its default).
        daemons = [("", self.daemon, self.shm)] + ([(f", {HUGE}", self.huge, self.huge_mount)] if self.huge else [])
        for variant, daemon, _ in daemons:
            for label, f in (("CLI preload (safetensors)", files["safetensors"]),
                             ("CLI preload (torch.save)", files["state"])):
                for _ in range(r):
                    t = time.perf_counter()
                    info = daemon.run("preload", str(f))
                    out.setdefault(label + variant, []).append(time.perf_counter() - t)
                    daemon.run("rm", "--force", info["digest"])
        bench = str(self.build / "bench/zerocopy_bench")
        for mode, label, variant, directory in [("memcpy", "memcpy into fresh shared memory" + v, v, d)
                                                for v, _, d in daemons] + [("xxh3", "XXH3 alone", "", self.shm)]:
            p = subprocess.run([bench, mode, "--bytes", str(nbytes), "--repeats", str(r), "--dir", str(directory)],
                               capture_output=True, text=True, check=True)
            out[label] = json.loads(p.stdout)["seconds"]
        res = {k: summary(v) for k, v in out.items()}
        for v in res.values():
            v["gib_per_s"] = nbytes / GiB / v["median"]
        # Re-publish the model for later sections.
        ray_zerocopy.ModelWrapper.from_model(model)
        return res

    # -- 5. GetModel --------------------------------------------------------------

    def getmodel(self, digest):
        """GetModel, and grpc.health.v1 Check beside it: the floor any unary
        gRPC call over the unix socket costs here. "raw": GetModel called as
        the health check is (generic stub, response unparsed), to tell the
        daemon's share from the client library's; "message": the manifest
        asked for as a message and parsed every call, as before
        manifest_as_bytes; "health_deadline": the health check with the
        deadline the client library gives every call. Every client has a
        connection of its own, as separate processes do."""
        out = {}
        for c in (1, 16, 64):
            for key, mode, extra in (("getmodel", "getmodel", []), ("raw", "getmodel-raw", []),
                                     ("message", "getmodel-message", []), ("health", "health", []),
                                     ("health_deadline", "health", ["--deadline", "1"])):
                p = subprocess.run([str(self.build / "bench/zerocopy_bench"), mode, "--socket", self.daemon.socket,
                                    "--model", digest, "--clients", str(c), "--seconds", str(self.args.rpc_seconds),
                                    *extra], capture_output=True, text=True)
                if key == "getmodel":
                    out[c] = json.loads(p.stdout)
                else:
                    out[c][key] = json.loads(p.stdout)
        return out

    def first_map(self, digest):
        """The first Map of a fresh C++ process, step by step (a new process
        each time), and a second Map in the same process; then the first
        MapSegment (from the sealed files, the lease in the background)."""
        segment = self.daemon.run("inspect", digest)["model"]["segment_path"]
        out = {}
        for label, extra in (("Map", []), ("MapSegment", ["--segment", segment])):
            runs = []
            for _ in range(5 * self.args.repeats):
                p = subprocess.run([str(self.build / "bench/zerocopy_bench"), "firstmap", "--socket",
                                    self.daemon.socket,
                                    "--model", digest, *extra], capture_output=True, text=True, check=True)
                runs.append(json.loads(p.stdout))
            out[label] = {k: summary([run[k] / 1000 for run in runs]) for k in runs[0] if k.endswith("_ms")}
        return out

    # -- 6. GPU ---------------------------------------------------------------------

    def gpu(self, mib, files):
        """Fresh processes on cuda:0: ours attach to the daemon's one device
        copy (the first makes it); the alternative copies the host-mapped
        model to the GPU itself. Device memory: the drop in free memory while
        1 and 4 such processes hold the model (CUDA contexts included; for
        ours, also the daemon's copy and context)."""
        import torch
        if not torch.cuda.is_available():
            return {"skipped": "no GPU on this machine (torch.cuda.is_available() is False): section 6 runs where "
                               "one exists (bench/results-gpu holds a run on an H100)"}
        r = self.args.repeats
        out = {"mib": mib}
        log(f"bench: GPU, {mib} MiB")
        free_start = torch.cuda.mem_get_info(0)[0]  # before the daemon's copy exists: ours are charged for it
        attach = [self.worker("gpu-attach", files["wrapper"])["seconds"] for _ in range(r + 1)]
        out["first attach (makes the device copy)"] = attach[0]
        out["load"] = {"ours: attach to the shared copy": summary(attach[1:]),
                       '.to("cuda") of the host-mapped model': summary(
                           [self.worker("gpu-to-cuda", files["wrapper"])["seconds"] for _ in range(r)])}
        memory = {}
        for mode, label in (("gpu-attach", "ours"), ("gpu-to-cuda", 'own copy (.to("cuda"))')):
            for n in (1, 4):
                free_before = free_start if label == "ours" else torch.cuda.mem_get_info(0)[0]
                procs = []
                for _ in range(n):
                    p = subprocess.Popen([self.python, str(HERE / "bench_worker.py"), mode, str(files["wrapper"]),
                                          "hold"],
                                         env=self.env_ours, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    p.stdout.readline()
                    procs.append(p)
                used = free_before - torch.cuda.mem_get_info(0)[0]
                for p in procs:
                    p.stdin.close()
                    p.wait(60)
                memory.setdefault(label, {})[n] = {"device_bytes": used}
                log(f"bench: GPU memory, {label}, {n} processes: {used / MiB:.0f} MiB")
        out["memory"] = memory
        return out

    def run(self):
        t0 = time.perf_counter()
        self.start_ray()
        self.start_huge_daemon()
        res = self.results
        res["load"], res["model"] = {}, {}
        detail = self.args.detail_mib
        for mib in self.args.sizes:
            model, files, digest, nbytes, _ = self.prepare(mib)
            res["model"][mib] = {"bytes": nbytes, "tensors": len(model.state_dict()), "digest": digest}
            if mib != detail:
                model = None  # leave the memory to the methods measured
            res["load"][mib] = self.load_times(mib, files, digest)
            if mib == detail:
                for key, label, fn in (
                        ("first_forward", "first forward",
                         lambda: {"mib": mib, "results": self.first_forward(mib, files, digest)}),
                        ("publish", "publish",
                         lambda: {"mib": mib, "results": self.publish(mib, model, files, nbytes)}),
                        ("getmodel", "GetModel", lambda: self.getmodel(digest)),
                        ("first_map", "first Map in a fresh process", lambda: self.first_map(digest)),
                        ("jit_load", "TorchScript load", self.jit_load),
                        ("many_tensors", "10,000 tensors", self.many_tensors),
                        ("gpu", "GPU", lambda: self.gpu(mib, files)),
                        ("memory", "memory", lambda: {"mib": mib, "results": self.memory(mib, files)})):
                    log(f"bench: {label}")
                    try:
                        res[key] = fn()
                    except Exception as e:  # one section failing keeps the others
                        log(f"bench: {label} failed: {e}")
                        res.setdefault("errors", {})[key] = str(e)[-2000:]
                if self.huge_note and "first_forward" in res:
                    res["first_forward"]["note"] = self.huge_note
            model = None  # its memory back to the next size
            for f in files.values():
                f.unlink()
        res["wall_seconds"] = time.perf_counter() - t0
        return res

    def run_gpu_only(self):
        t0 = time.perf_counter()
        res = self.results
        res["gpu_only"] = True
        for mib in self.args.sizes:
            model, files, digest, nbytes, _ = self.prepare(mib)
            del model
            res.setdefault("gpu_sizes", {})[mib] = self.gpu(mib, files)
            for f in files.values():
                f.unlink()
        res["wall_seconds"] = time.perf_counter() - t0
        return res


def section(script: str, argv: list, timeout: int) -> dict:
    """A section run as its own process (a Ray cluster or a zerocopyd of its
    own): its last JSON line, or {"error": what it printed last}."""
    r = subprocess.run([sys.executable, str(HERE / script), *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr or r.stdout)[-3000:]}
    return json.loads(lines[-1])


def across_nodes(args):
    """Section 7 (bench_cluster.py): it starts a Ray cluster of its own,
    once this process's Ray instance is down."""
    sizes = [256] if args.quick else [256, 1024]
    log(f"bench: across nodes ({', '.join(map(str, sizes))} MiB)")
    return section("bench_cluster.py", ["--build", args.build, "--sizes", *sizes, "--repeats",
                                        2 if args.quick else 3], 1800)


def hugging_face(args):
    """Section 9 (bench_hf.py, a zerocopyd of its own)."""
    log("bench: a Hugging Face model in a fresh process")
    quick = ["--hidden", 512, "--layers", 4] if args.quick else []
    return section("bench_hf.py", ["--build", args.build, "--repeats", 1 if args.quick else 7, *quick], 3600)


def exported(args):
    """Section 10 (bench_export.py, a zerocopyd of its own)."""
    log("bench: a torch.export program in a fresh process")
    quick = ["--quick"] if args.quick else []
    return section("bench_export.py", ["--build", args.build, "--repeats", 1 if args.quick else 7, *quick], 3600)


def fan_out(args):
    """Section 8: one simulated cluster per configuration (nodes, link rate,
    size), each its own process tree, one at a time."""
    sys.path.insert(0, str(HERE))
    import fanout_model
    import simcluster
    reason = simcluster.skip_reason()
    if reason:
        return {"skipped": reason}
    # 2 Gbit/s links at 4 nodes; 1 Gbit/s at 8, where two cores cannot
    # forward more for eight nodes at once. Not 1 GiB at 8 nodes: eight
    # copies in the object stores, a model in the driver and eight actors
    # with torch imported pass Ray's memory monitor's limit on this 24 GiB
    # machine (it kills the receivers).
    # 2 nodes: one pull on one link against ray.get of the same bytes.
    configs = [(2, "2gbit", 256), (4, "2gbit", 256)] if args.quick else [
        (2, "2gbit", 256), (2, "2gbit", 1024), (4, "2gbit", 256), (4, "2gbit", 1024), (8, "1gbit", 256)]
    runs = []
    for nodes, rate, mib in configs:
        log(f"bench: fan-out to {nodes} nodes at {rate}, {mib} MiB")
        v = sys.executable
        repeats = "1" if args.quick else "2"
        fanout = f"{v} {HERE / 'bench_fanout.py'} --mib {mib} --warmup 1 --repeats {repeats}"
        # Then (b), the published ray-zerocopy 0.2.0, as a second driver on the
        # same cluster with it first on PYTHONPATH (same import name as ours).
        baseline = Path(sys.executable).parent.parent / "baseline-ray-zerocopy"
        published = f" && PYTHONPATH={baseline}:$PYTHONPATH {fanout} --published" if baseline.is_dir() else ""
        argv = [v, str(HERE / "simcluster.py"), "--nodes", str(nodes), "--rate", rate, "--build", args.build,
                "--object-store", "2G", "--", "/bin/sh", "-c", f"{fanout} --ours{published}"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=1800,
                           env=dict(os.environ, RAY_AUTH_MODE="disabled"))
        lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
        if r.returncode != 0 or not lines:
            runs.append({"nodes": nodes, "rate": rate, "mib": mib, "error": (r.stderr or r.stdout)[-3000:]})
            continue
        out = next(json.loads(line) for line in lines if '"ours"' in line)
        pub = next((json.loads(line)["published"] for line in lines if '"published"' in line), None)
        runs.append({"nodes": nodes, "rate": rate, "mib": mib, "rate_bits": out["rate_bits"],
                     "bytes": out["ours"]["bytes"], "link_s": out.get("link_s"), "ray": out["ray"],
                     "ours": out["ours"], "published": pub, "node_ids": out.get("node_ids", {})})
    m = fanout_model.fit(runs)
    return {"runs": runs, "model": m, "check": fanout_model.check(m, runs) if m else [],
            "projection": fanout_model.project(m) if m else [], "ray_published": fanout_model.RAY_PUBLISHED}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small model, fewer runs: about 5 minutes")
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--out", default=None, help="results directory (default bench/results, build/bench-quick)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--gpu-only", action="store_true", help="section 6 alone, 1 and 4 GiB (no Ray needed)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.detail_mib, args.repeats, args.actors, args.rpc_seconds = [256], 256, 2, [2], 1
        args.by_value_max_mib = 256
    else:
        args.sizes, args.detail_mib, args.repeats = [256, 1024, 4096], 1024, 5
        args.actors, args.rpc_seconds = [1, 2, 4, 8], 3
        args.by_value_max_mib = 4096
    out = Path(args.out or (ROOT / ("build/bench-quick" if args.quick else "bench/results")))
    out.mkdir(parents=True, exist_ok=True)
    if args.gpu_only:
        args.sizes, args.repeats = [1024, 4096], 5
        out = Path(args.out or (ROOT / "bench/results-gpu"))
        out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    try:
        results = bench.run_gpu_only() if args.gpu_only else bench.run()
    finally:
        bench.stop()
    if not args.gpu_only:
        results["across_nodes"] = across_nodes(args)
        results["fan_out"] = fan_out(args)
        results["hugging_face"] = hugging_face(args)
        results["exported"] = exported(args)
    results = json.loads(json.dumps(results))  # the same keys (strings) as a reader of the file sees
    (out / "results.json").write_text(json.dumps(results, indent=1))
    import report
    md = report.markdown(results)
    (out / "results.md").write_text(md)
    report.plots(results, out)
    print(md)
    log(f"bench: done in {results['wall_seconds']:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
