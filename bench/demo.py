"""The demo behind `make demo`: one copy of a model, mapped by every process.

Starts zerocopyd on a temporary socket and segment directory, preloads a
~1 GiB safetensors model with `zerocopy preload`, starts N processes that
each map it through the C++ client and checksum every weight, then N
processes that each read the file into their own memory, and prints per
process load time, RSS and PSS and the totals against the model size. PSS
is read from /proc/PID/smaps_rollup while all N processes of a kind hold
the model. Stops the daemon and removes everything it made.

    demo.py [--build build] [--mib 1024] [--processes 4] [--model FILE]
"""
import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def smaps_rollup(pid: int) -> dict:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


@contextlib.contextmanager
def daemon(build: Path, workdir: Path):
    socket = workdir / "zerocopyd.sock"
    segments = Path(f"/dev/shm/zerocopy-demo-{os.getpid()}")
    log = open(workdir / "zerocopyd.log", "w")
    proc = subprocess.Popen(
        [str(build / "daemon/zerocopyd"), "--socket", str(socket), "--segment-dir", str(segments),
         "--host-budget", "75%", "--metrics-address", "off"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                sys.exit(f"demo: zerocopyd did not start:\n{(workdir / 'zerocopyd.log').read_text()}")
            time.sleep(0.05)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(segments, ignore_errors=True)


def run_group(cmd: list, n: int) -> list:
    """Starts n workers one after another, waits until all hold the model,
    measures them all, then lets them exit."""
    procs, reports = [], []
    try:
        for _ in range(n):
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            line = p.stdout.readline()
            if not line:
                p.wait()
                sys.exit(f"demo: {' '.join(cmd)} failed (exit {p.returncode})")
            reports.append(json.loads(line))
        for p, r in zip(procs, reports):
            mem = smaps_rollup(p.pid)
            r["rss"], r["pss"] = mem["Rss"], mem["Pss"]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    return reports


def segment_pss(pid: int, digest: str) -> int:
    pss, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:
                inside = line.rstrip().endswith(f"{digest}.seg")
            elif inside and line.startswith("Pss:"):
                pss += int(fields[1]) * 1024
    return pss


def python_actors(build: Path, socket: Path, model: Path, workdir: Path, n: int):
    """Publishes the model as an nn.Module through ActorWrapper and starts n
    Python processes that load it."""
    env = dict(os.environ, PYTHONPATH=str(build / "python"), ZEROCOPY_SOCKET=str(socket))
    wrapper_file = workdir / "wrapper.pkl"
    publish = f"""
import pickle, torch
from safetensors.torch import load_file
from ray_zerocopy import ActorWrapper
state = load_file({str(model)!r})
layers = sum(1 for k in state if k.startswith("layers.") and k.endswith(".weight"))
class Demo(torch.nn.Module):  # pickled by value: refer to no big globals here
    def __init__(self, n):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4096, 4096) for _ in range(n))
    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
m = Demo(layers)
m.load_state_dict({{k: v for k, v in state.items() if k.startswith("layers.")}})
del state
w = ActorWrapper(m)
open({str(wrapper_file)!r}, "wb").write(pickle.dumps(w))
print(w._model_info[""]["digest"], w._model_info[""]["bytes"])
"""
    out = subprocess.run([sys.executable, "-c", publish], env=env, check=True, capture_output=True, text=True)
    digest, published = out.stdout.strip().splitlines()[-1].split()
    procs, reports = [], []
    try:
        for _ in range(n):
            p = subprocess.Popen([sys.executable, str(ROOT / "bench/py_worker.py"), str(wrapper_file)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            line = p.stdout.readline()
            if not line:
                p.wait()
                sys.exit(f"demo: bench/py_worker.py failed (exit {p.returncode})")
            reports.append(json.loads(line))
        for p, r in zip(procs, reports):
            r["pss"] = smaps_rollup(p.pid)["Pss"]
            r["segment_pss"] = segment_pss(p.pid, digest)
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    return reports, int(published)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=ROOT / "build")
    parser.add_argument("--mib", type=int, default=1024, help="demo model size (default 1024)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--model", type=Path, help="use this safetensors file instead of generating one")
    args = parser.parse_args()
    build = args.build.resolve()
    cli = str(build / "client/cli/zerocopy")
    worker = str(build / "client/cpp/zerocopy_map_worker")

    with tempfile.TemporaryDirectory(prefix="zerocopy-demo-") as tmp:
        workdir = Path(tmp)
        model = args.model
        if model is None:
            model = workdir / "demo.safetensors"
            subprocess.run([sys.executable, str(ROOT / "bench/make_demo_model.py"), str(model),
                            "--mib", str(args.mib)], check=True)
        with daemon(build, workdir) as socket:
            t0 = time.monotonic()
            out = subprocess.run([cli, "--socket", str(socket), "preload", str(model), "--name", "demo"],
                                 check=True, capture_output=True, text=True)
            print(f"preloaded {model.name} as 'demo' in {time.monotonic() - t0:.2f} s, digest {out.stdout.strip()}")
            info = json.loads(subprocess.run([cli, "--socket", str(socket), "--json", "inspect", "demo"],
                                             check=True, capture_output=True, text=True).stdout)
            size = int(info["model"]["size"]) if "model" in info else int(info["size"])

            shared = run_group([worker, "--socket", str(socket), "--model", "demo", "--hold"], args.processes)
            private = run_group([worker, "--file", str(model), "--hold"], args.processes)
            python_group, python_size = python_actors(build, socket, model, workdir, args.processes)

    print(f"\nmodel: {mib(size)} in one segment; {args.processes} processes of each kind, "
          "measured while all of them hold the model\n")
    print("load: until every tensor is addressable; read all: the checksum over every byte after that\n")
    print(f"{'':22}{'pid':>8}{'load':>11}{'read all':>12}{'RSS':>12}{'PSS':>12}  checksum")
    for label, group in (("zerocopy (mapped)", shared), ("read file (private)", private)):
        for i, r in enumerate(group):
            name = label if i == 0 else ""
            print(f"{name:22}{r['pid']:>8}{r['load_ms']:>8.1f} ms{r['checksum_ms']:>9.1f} ms"
                  f"{mib(r['rss']):>12}{mib(r['pss']):>12}  {r['checksum']}")
    sum_shared = sum(r["pss"] for r in shared)
    sum_private = sum(r["pss"] for r in private)
    print()
    print(f"total PSS, zerocopy:  {mib(sum_shared):>10} = {sum_shared / size:.2f} x model size")
    print(f"total PSS, read file: {mib(sum_private):>10} = {sum_private / size:.2f} x model size")
    print(f"memory saved: {mib(sum_private - sum_shared)} ({sum_private / sum_shared:.1f}x less); "
          f"median load {sorted(r['load_ms'] for r in shared)[len(shared) // 2]:.1f} ms against "
          f"{sorted(r['load_ms'] for r in private)[len(private) // 2]:.1f} ms")
    print(f"\n{args.processes} Python processes loading the model as an nn.Module through "
          "ray_zerocopy.ActorWrapper (torch imported in each):\n")
    print(f"{'pid':>8}{'load()':>11}{'forward':>11}{'process PSS':>14}{'segment PSS':>14}")
    for r in python_group:
        print(f"{r['pid']:>8}{r['load_ms']:>8.1f} ms{r['forward_ms']:>8.1f} ms{mib(r['pss']):>14}"
              f"{mib(r['segment_pss']):>14}")
    segment_total = sum(r["segment_pss"] for r in python_group)
    print(f"\nthe module's segment ({mib(python_size)}, the Linear layers' weights): "
          f"{mib(segment_total)} of PSS among all {args.processes} = {segment_total / python_size:.2f} x its size\n"
          "(the rest of each process's PSS is Python and torch)")
    if len({r["checksum"] for r in python_group}) != 1:
        print("demo: the Python processes disagree about the outputs", file=sys.stderr)
        return 1
    checksums = {r["checksum"] for r in shared + private}
    if len(checksums) != 1:
        print(f"demo: processes disagree about the weights: {sorted(checksums)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
