"""pytest harness: the real zerocopyd on a temporary socket and segment
directory, the package from the source tree with its extension from the
build tree, and (for the Ray tests) a local Ray instance bound to
127.0.0.1 with the dashboard and usage stats off."""
import atexit
import os
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("ZEROCOPY_BUILD", ROOT / "build")).resolve()
PACKAGE_PATHS = [str(BUILD / "python"), str(Path(__file__).parent)]  # the package as the build places it

# This process and every process it starts (subprocesses, Ray workers).
for p in reversed(PACKAGE_PATHS):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ["PYTHONPATH"] = os.pathsep.join(PACKAGE_PATHS + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Built-model skeletons (ray_zerocopy/_cache.py) in a directory of this run,
# not the user's ~/.cache; removed at exit.
_SKELETONS = tempfile.mkdtemp(prefix="zc-test-skeletons-")
os.environ["ZEROCOPY_SKELETON_CACHE"] = _SKELETONS
atexit.register(shutil.rmtree, _SKELETONS, True)


class Daemon:
    def __init__(self, host_budget="2G", config: str = "", metrics_address="off"):
        """config: TOML text for --config (e.g. the fake GPU backend).
        metrics_address: off unless a test asks (127.0.0.1:0 for any free
        port): the suite runs several daemons at once."""
        self.dir = Path(tempfile.mkdtemp(prefix="zc-pytest-"))
        self.socket = str(self.dir / "zerocopyd.sock")
        self.segment_dir = tempfile.mkdtemp(prefix="zc-pytest-", dir="/dev/shm") + "/segments"
        self.cli = str(BUILD / "client/cli/zerocopy")
        self.log = open(self.dir / "zerocopyd.log", "w")
        extra = []
        if config:
            (self.dir / "zerocopyd.toml").write_text(config)
            extra = ["--config", str(self.dir / "zerocopyd.toml")]
        self.proc = subprocess.Popen(
            [str(BUILD / "daemon/zerocopyd"), "--socket", self.socket, "--segment-dir", self.segment_dir,
             "--host-budget", host_budget, "--log-level", "debug", "--metrics-address", metrics_address, *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"zerocopyd did not start: {(self.dir / 'zerocopyd.log').read_text()}")
            try:
                with socketlib.socket(socketlib.AF_UNIX) as s:
                    s.connect(self.socket)
                break
            except OSError:
                time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(Path(self.segment_dir).parent, ignore_errors=True)

    def run_cli(self, *args):
        return subprocess.run([self.cli, "--socket", self.socket, *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def daemon():
    d = Daemon()
    os.environ["ZEROCOPY_SOCKET"] = d.socket
    yield d
    d.stop()


@pytest.fixture(scope="session")
def ray_local(daemon):
    import ray  # never skipped: a Ray that cannot start fails the tests with its own error
    # Under `make test-asan` this interpreter runs with libasan preloaded
    # (LD_PRELOAD). Ray's own servers (GCS, raylet, agents) are started
    # without it; its workers, which import our extension, get it back
    # through the job's runtime environment.
    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"LD_PRELOAD": preload}} if preload else None)
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload
    yield ray
    ray.shutdown()


def run_python(code: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (the venv's) with this environment
    (plus `env`)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=full_env)
