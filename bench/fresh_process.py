"""A loader run in a fresh Python process (sections 9 and 10): the child's
code prints one JSON line; with `hold`, it then waits for its stdin to
close (the parent reads memory meanwhile)."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def spawn(code: str, argv: list, env: dict, hold=False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)] + (["hold"] if hold else []), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True)


def run_once(code: str, argv: list, env: dict) -> dict:
    """The child's JSON line, or {"error": its last line of output}."""
    p = spawn(code, argv, env)
    out, err = p.communicate(timeout=600)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (err or out).strip().splitlines()[-1][:300] if (err or out).strip() else "no output"}
    return json.loads(lines[-1])


@contextlib.contextmanager
def scratch_daemon(build: Path, prefix: str):
    """A zerocopyd of its own (segments in /dev/shm), a work directory, and
    the environment a child needs to reach both (AOTInductor programs and
    built-model skeletons cached in the work directory); all removed on
    exit.
    Yields (daemon, work directory, environment)."""
    from bench import Daemon
    work = Path(tempfile.mkdtemp(prefix=prefix))
    segments = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm")
    daemon = Daemon(build, segments, "4G")
    env = dict(os.environ, ZEROCOPY_SOCKET=daemon.socket, ZEROCOPY_AOTI_CACHE=str(work / "aoti-cache"),
               ZEROCOPY_SKELETON_CACHE=str(work / "skeletons"),
               PYTHONPATH=os.pathsep.join([str(build / "python"), os.environ.get("PYTHONPATH", "")]))
    try:
        yield daemon, work, env
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(segments, ignore_errors=True)


def medians(code: str, argvs: dict, env: dict, repeats: int, keys: tuple, label: str) -> dict:
    """For each loader of `argvs` (its name: the child's argv), `repeats` + 1
    fresh processes of `code`, in rounds of one process per loader: the
    loaders share whatever the machine does meanwhile (this VM runs some
    rounds ~1.4x slower than others), rather than one of them taking a slow
    stretch alone. The first round warms the page cache and is not
    counted; dirty pages (a model just written) are flushed before it.
    Per loader: the medians of `keys` over its runs (and the runs
    themselves), or {"error": its first error}."""
    import statistics
    os.sync()
    rounds = [{loader: run_once(code, argv, env) for loader, argv in argvs.items()} for _ in range(repeats + 1)][1:]
    out = {}
    for loader in argvs:
        runs = [r[loader] for r in rounds]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            out[loader] = {"error": errors[0]}
            continue
        out[loader] = {k: statistics.median(r[k] for r in runs) for k in keys}
        out[loader]["runs"] = runs
        print(f"{label}, {loader}: {out[loader][keys[1]]:.3f} s", file=sys.stderr, flush=True)
    return out
