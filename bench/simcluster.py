"""A simulated multi-host cluster on this one machine, for the benchmarks and
the tests (DESIGN.md, "Ray": measure cluster behaviour on a simulated
multi-host cluster, not only on 127.0.0.1).

Each node is a Linux network namespace with its own address, joined to a
bridge that lives in a "switch" namespace of its own (the host's root
namespace gets no new address or route). Each node's veth link is limited
by a `tc` token bucket in both directions (the node's end and the switch's
end), so a node has one NIC's bandwidth, like a separate machine. Every
node runs, inside its namespace, a `ray start` node (node 0 is the head)
and a zerocopyd with its own socket and segment directory; Ray's raylets
hand ZEROCOPY_SOCKET and PYTHONPATH (<build>/python) to their workers.

    # one command, a 4-node cluster at 2 Gbit/s per link; CMD runs on node 0
    <venv>/bin/python bench/simcluster.py --nodes 4 --rate 2gbit -- \\
        <venv>/bin/python bench/bench_fanout.py --mib 256

    # from Python (a test, a benchmark)
    from simcluster import SimCluster, skip_reason
    with SimCluster(nodes=4, rate="2gbit") as c:
        c.run(0, [sys.executable, "driver.py"], check=True)   # driver on node 0

Everything a run makes carries one short per-run prefix ("zc" + 4 hex
digits): namespaces <p>sw and <p>n<i>, links <p>br, <p>n<i>a (node end),
<p>n<i>b (switch end), the directory /tmp/<p> (its `owner` file names the
process that made it; node i's Ray temp dir, daemon socket and logs are in
/tmp/<p>/n<i>) and the segment directories /dev/shm/<p>-n<i>. Teardown
finds what a run started by namespace (`ip netns pids`) and never runs
`ray stop`, which would stop every other Ray instance on the machine.
Needs root, `ip` and `tc`; skip_reason() says in one line what is missing.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TMP = Path("/tmp")
SHM = Path("/dev/shm")
PREFIX_RE = re.compile(r"^zc[0-9a-f]{4}$")
NS_RE = re.compile(r"^(zc[0-9a-f]{4})(sw|pr|n\d{1,3})$")       # our namespaces
SHM_RE = re.compile(r"^(zc[0-9a-f]{4})-n\d{1,3}$")              # our segment directories
RAY_PORT = 6379
MAX_NODES = 250
TERM_GRACE_S = 2.0   # Ray's head (gcs_server, monitor) often ignores SIGTERM for 10 s and more
CMD_TIMEOUT_S = 30


class SimClusterError(RuntimeError):
    pass


# --- small helpers ---------------------------------------------------------

def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _sh(*argv, check=True, timeout=CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Runs one ip/tc command; an error names the command and its message."""
    argv = [str(a) for a in argv]
    tool = _tool(argv[0])
    p = subprocess.run([tool or argv[0], *argv[1:]], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise SimClusterError(f"`{' '.join(argv)}` failed: {(p.stderr or p.stdout).strip()}")
    return p


def venv_bin() -> Path:
    """The directory of the interpreter (and its `ray`): this one's when it
    has ray next to it, else the project's venv. sys.executable is not
    resolved: a venv's python is a symlink to the system one."""
    here = Path(sys.executable).parent
    if (here / "ray").exists():
        return here
    return Path(os.environ.get("ZEROCOPY_VENV", Path.home() / ".cache/zerocopy/venv")) / "bin"


_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
               "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
               "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12}


def parse_rate(rate: str) -> float:
    """tc's rate syntax -> bits per second ("2gbit" -> 2e9; tc's "bps" are
    bytes per second)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(rate).lower())
    if not m or m.group(2) not in _RATE_UNITS:
        raise ValueError(f"rate {rate!r}: expected a number and one of {', '.join(_RATE_UNITS)} (e.g. 2gbit)")
    bits = float(m.group(1)) * _RATE_UNITS[m.group(2)]
    if bits <= 0:
        raise ValueError(f"rate {rate!r} is not positive")
    return bits


def _parse_bytes(text) -> int:
    m = re.fullmatch(r"\s*([0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise ValueError(f"size {text!r}: expected e.g. 2G, 512M or a number of bytes")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2)]


def _starttime(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _netns_list() -> list[str]:
    p = _sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    p = _sh("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit() and int(x) != os.getpid()]


def _kill_namespaces(namespaces: list[str], reap=(), grace: float = TERM_GRACE_S) -> None:
    """SIGTERM to every process in these namespaces, SIGKILL to what is left
    after `grace` seconds; then waits (bounded) until they are empty.
    `reap`: our own Popen children among them (waited for, so none stays a
    zombie)."""
    def alive():
        for proc in reap:
            proc.poll()
        return {pid for ns in namespaces for pid in _ns_pids(ns)}

    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        pids = alive()
        if not pids:
            return
        if sig == signal.SIGKILL and grace and os.environ.get("SIMCLUSTER_DEBUG"):
            print("simcluster: SIGKILL to", {p: _comm(p) for p in pids}, file=sys.stderr)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive():
                return
            time.sleep(0.1)
    left = alive()
    if left:
        print(f"simcluster: processes {sorted(left)} survived SIGKILL in {namespaces}", file=sys.stderr)


# --- ownership of a prefix: what cleanup_stale may remove ------------------

def _claim_prefix() -> str:
    """A fresh prefix whose /tmp/<p> this process made, with its owner file."""
    taken = {m.group(1) for ns in _netns_list() if (m := NS_RE.match(ns))}
    for _ in range(64):
        p = "zc%04x" % random.getrandbits(16)
        if p in taken or any(SHM.glob(f"{p}-n*")):
            continue
        try:
            (TMP / p).mkdir(mode=0o755)
        except FileExistsError:
            continue
        (TMP / p / "owner").write_text(f"{os.getpid()} {_starttime(os.getpid())}\n")
        return p
    raise SimClusterError("no free simcluster prefix after 64 tries (leftovers? see cleanup_stale())")


def _owner_alive(prefix: str) -> bool:
    owner = TMP / prefix / "owner"
    try:
        pid, start = owner.read_text().split()
        return _starttime(int(pid)) == start
    except FileNotFoundError:
        # A directory made a moment ago whose owner file is not written yet.
        with contextlib.suppress(OSError):
            return time.time() - (TMP / prefix).stat().st_mtime < 60
        return False
    except (OSError, ValueError):
        return False


def _teardown(prefix: str, reap=()) -> None:
    """Removes everything of run `prefix`: its processes, namespaces (their
    veths go with them), segment and temp directories (the owner file last)."""
    namespaces = [ns for ns in _netns_list() if (m := NS_RE.match(ns)) and m.group(1) == prefix]
    _kill_namespaces(namespaces, reap)
    for ns in sorted(namespaces, key=lambda n: n.endswith("sw")):  # the switch last
        _sh("ip", "netns", "del", ns, check=False)
    for d in SHM.glob(f"{prefix}-n*"):
        if SHM_RE.match(d.name):
            shutil.rmtree(d, ignore_errors=True)
    if (TMP / prefix).is_dir():
        for child in (TMP / prefix).iterdir():
            if child.name != "owner":
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        shutil.rmtree(TMP / prefix, ignore_errors=True)


def cleanup_stale() -> list[str]:
    """Removes the leftovers of earlier runs whose owner process is gone (a
    crash, a SIGKILL): namespaces named like ours, their processes, segment
    and temp directories. Runs whose owner lives are left alone. Returns the
    prefixes removed."""
    if os.geteuid() != 0 or not _tool("ip"):
        return []
    prefixes = {m.group(1) for ns in _netns_list() if (m := NS_RE.match(ns))}
    prefixes |= {m.group(1) for d in SHM.glob("zc*-n*") if (m := SHM_RE.match(d.name))}
    prefixes |= {d.name for d in TMP.glob("zc*") if PREFIX_RE.match(d.name) and (d / "owner").exists()}
    removed = []
    for p in sorted(prefixes):
        if not _owner_alive(p):
            _teardown(p)
            removed.append(p)
    return removed


# --- can this machine do it? -----------------------------------------------

_SKIP: list = []


def skip_reason() -> str | None:
    """None when this machine can run a SimCluster; else one line saying why
    not (tests skip with it). Tries a namespace, a veth pair and a token
    bucket once per process."""
    if _SKIP:
        return _SKIP[0]
    reason = None
    if os.geteuid() != 0:
        reason = "simcluster needs root (network namespaces, veth links and tc)"
    elif not _tool("ip") or not _tool("tc"):
        reason = "simcluster needs `ip` and `tc` (Debian package iproute2)"
    elif not (venv_bin() / "ray").exists():
        reason = f"simcluster needs Ray's `ray` command next to the interpreter ({venv_bin() / 'ray'} is missing)"
    else:
        prefix = None
        try:
            prefix = _claim_prefix()
            ns = f"{prefix}pr"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "add", f"{prefix}pra", "type", "veth", "peer", "name", f"{prefix}prb")
            _sh("tc", "-n", ns, "qdisc", "add", "dev", f"{prefix}pra", "root", "tbf", "rate", "1gbit",
                "burst", "2mb", "latency", "100ms")
        except (SimClusterError, OSError, subprocess.SubprocessError) as e:
            reason = f"simcluster cannot make a network namespace with a rate-limited veth here: {e}"
        finally:
            if prefix:
                _teardown(prefix)
    _SKIP.append(reason)
    return reason


# --- the cluster -----------------------------------------------------------

@dataclass
class SimNode:
    index: int
    ns: str
    ip: str
    socket: str            # this node's zerocopyd
    segment_dir: str       # /dev/shm/<p>-n<i>
    resource: str          # "zc_node<i>": a custom Ray resource of 1 on this node only
    temp_dir: str          # /tmp/<p>/n<i>: Ray's --temp-dir; the daemon's socket and logs too
    alive: bool = True
    daemon: subprocess.Popen | None = field(default=None, repr=False)


_LIVE: set = set()          # clusters to stop at exit
_STOPPING = threading.Event()


@atexit.register
def _stop_all():
    for c in list(_LIVE):
        c.stop()


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT/SIGTERM held back during teardown (main thread only), then
    delivered again: a second Ctrl-C must not leave half a cluster."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got, old = [], {}

    def hold(signum, frame):
        got.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.signal(s, hold)
    _STOPPING.set()
    try:
        yield
    finally:
        _STOPPING.clear()
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: a handler set outside Python
        for s in dict.fromkeys(got):
            os.kill(os.getpid(), s)


class SimCluster:
    """nodes namespaces, each a Ray node and a zerocopyd, links of `rate`
    (tc syntax) each way. A context manager: start() on entry, stop() on
    exit (idempotent; also at interpreter exit)."""

    def __init__(self, nodes=4, rate="2gbit", build="build", object_store_bytes=2 << 30, host_budget="8G",
                 env=None, num_cpus=8, node_env=None):
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}, not {nodes}")
        self.rate = str(rate)
        self.rate_bits = parse_rate(rate)
        b = Path(build)
        if not b.is_absolute() and not b.exists():
            b = ROOT / b
        self.build = b.resolve()
        self.object_store_bytes = int(object_store_bytes)
        self.host_budget = str(host_budget)
        self.extra_env = {k: str(v) for k, v in (env or {}).items()}
        # {node index: {name: value}}: one node's own (a fault to inject there).
        self.node_env = {int(i): {k: str(v) for k, v in e.items()} for i, e in (node_env or {}).items()}
        self.num_cpus = int(num_cpus)
        self.want = nodes
        self.nodes: list[SimNode] = []
        self.address: str | None = None
        self.prefix: str | None = None
        self.subnet: str | None = None       # "10.X.Y"
        self.start_seconds = self.stop_seconds = None
        self._stopped = False
        self._lock = threading.RLock()

    # -- lifecycle --

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        reason = skip_reason()
        if reason:
            raise SimClusterError(reason)
        for what, path in (("zerocopyd", self.build / "daemon/zerocopyd"), ("ray", venv_bin() / "ray")):
            if not path.exists():
                raise SimClusterError(f"{what} not found at {path} (build it / install the venv first)")
        need = self.want * self.object_store_bytes + (256 << 20)
        st = os.statvfs(SHM)
        if st.f_bavail * st.f_frsize < need:
            raise SimClusterError(f"/dev/shm has {st.f_bavail * st.f_frsize >> 20} MiB free, {self.want} nodes' "
                                  f"object stores need {need >> 20} MiB: fewer nodes or smaller object_store_bytes")
        t0 = time.monotonic()
        _LIVE.add(self)
        try:
            self.prefix = _claim_prefix()
            self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
            self.address = f"{self.subnet}.1:{RAY_PORT}"
            sw = self._sw
            _sh("ip", "netns", "add", sw)
            _sh("ip", "-n", sw, "link", "set", "lo", "up")
            _sh("ip", "-n", sw, "link", "add", f"{self.prefix}br", "type", "bridge")
            _sh("ip", "-n", sw, "link", "set", f"{self.prefix}br", "up")
            for i in range(self.want):
                self._start_node(i)
            self._wait_for_nodes(self.want)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self):
        """Kills every process of every node, deletes the namespaces (and so
        the links) and the directories. Idempotent."""
        with self._lock:
            if self._stopped or self.prefix is None:
                self._stopped = True
                _LIVE.discard(self)
                return
            self._stopped = True
            t0 = time.monotonic()
            with _signals_deferred():
                _teardown(self.prefix, reap=[n.daemon for n in self.nodes if n.daemon])
            for n in self.nodes:
                n.alive = False
            self.stop_seconds = time.monotonic() - t0
            _LIVE.discard(self)

    # -- nodes --

    @property
    def _sw(self) -> str:
        return f"{self.prefix}sw"

    def _tc(self, ns: str, dev: str):
        burst = max(2 << 20, int(self.rate_bits / 8 / 250))  # tbf needs burst >= rate / HZ
        _sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate, "burst", str(burst),
            "latency", "100ms")

    def _start_node(self, i: int) -> SimNode:
        if i >= MAX_NODES:
            raise SimClusterError(f"at most {MAX_NODES} nodes")
        p = self.prefix
        node = SimNode(index=i, ns=f"{p}n{i}", ip=f"{self.subnet}.{i + 1}",
                       socket=str(TMP / p / f"n{i}" / "zerocopyd.sock"), segment_dir=str(SHM / f"{p}-n{i}"),
                       resource=f"zc_node{i}", temp_dir=str(TMP / p / f"n{i}"))
        self.nodes.append(node)
        a, b = f"{p}n{i}a", f"{p}n{i}b"
        _sh("ip", "netns", "add", node.ns)
        _sh("ip", "-n", node.ns, "link", "set", "lo", "up")
        _sh("ip", "link", "add", a, "netns", node.ns, "type", "veth", "peer", "name", b, "netns", self._sw)
        _sh("ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", a)
        _sh("ip", "-n", node.ns, "link", "set", a, "up")
        _sh("ip", "-n", self._sw, "link", "set", b, "master", f"{p}br")
        _sh("ip", "-n", self._sw, "link", "set", b, "up")
        self._tc(node.ns, a)          # what the node sends
        self._tc(self._sw, b)         # what the node receives
        Path(node.temp_dir).mkdir(parents=True)
        self._start_daemon(node)
        self._ray_start(node)
        return node

    def _start_daemon(self, node: SimNode):
        log = open(Path(node.temp_dir) / "zerocopyd.log", "w")
        node.daemon = subprocess.Popen(
            [_tool("ip"), "netns", "exec", node.ns, str(self.build / "daemon/zerocopyd"), "--socket", node.socket,
             "--segment-dir", node.segment_dir, "--host-budget", self.host_budget, "--log-level", "warn",
             "--metrics-address", "off"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            if node.daemon.poll() is not None or time.monotonic() > deadline:
                raise SimClusterError(f"zerocopyd of node {node.index} did not start: "
                                      f"{(Path(node.temp_dir) / 'zerocopyd.log').read_text()[-2000:]}")
            try:
                with socketlib.socket(socketlib.AF_UNIX) as s:
                    s.connect(node.socket)
                return
            except OSError:
                time.sleep(0.02)

    def _base_env(self) -> dict:
        """What every process of the cluster gets on top of this process's
        environment."""
        pythonpath = [str(self.build / "python")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                     if p and p != str(self.build / "python")]
        return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(pythonpath),
                # No pool of num_cpus idle workers per node when the first driver
                # connects (8 per node on a 2-core machine): workers start on demand.
                "RAY_prestart_worker_first_driver": "0", "RAY_enable_worker_prestart": "0"}

    def _ray_start(self, node: SimNode):
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LD_PRELOAD", "ZEROCOPY_SOCKET")}
        env.update(self._base_env())
        env.update(self.extra_env)
        env.update(self.node_env.get(node.index, {}))
        env["ZEROCOPY_SOCKET"] = node.socket  # raylets pass their environment to their workers
        argv = [_tool("ip"), "netns", "exec", node.ns, str(venv_bin() / "ray"), "start",
                "--node-ip-address", node.ip, "--temp-dir", node.temp_dir, "--num-cpus", str(self.num_cpus),
                "--resources", json.dumps({node.resource: 1}), "--object-store-memory", str(self.object_store_bytes),
                "--disable-usage-stats"]
        if node.index == 0:
            argv += ["--head", "--port", str(RAY_PORT), "--include-dashboard=false"]
        else:
            argv += ["--address", self.address]
        log = Path(node.temp_dir) / "ray-start.log"
        with open(log, "w") as out:
            try:
                p = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   timeout=180, start_new_session=True)
            except subprocess.TimeoutExpired:
                raise SimClusterError(f"`ray start` of node {node.index} took over 180 s: {log}") from None
        if p.returncode != 0:
            raise SimClusterError(f"`ray start` of node {node.index} failed ({p.returncode}): "
                                  f"{log.read_text()[-3000:]}")

    def _wait_for_nodes(self, count: int, timeout: float = 120):
        """Until GCS lists `count` live nodes (`ray start` of a worker returns
        before its raylet has registered)."""
        code = r"""
import sys, time
from ray._raylet import GcsClient
c = GcsClient(address=sys.argv[1])
want, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        infos = c.get_all_node_info(timeout=5)
        alive = sum(1 for n in (infos.values() if hasattr(infos, "values") else infos) if n.state == 0)
    except Exception as e:
        alive, err = -1, e
    if alive >= want:
        sys.exit(0)
    if time.monotonic() > deadline:
        sys.exit(f"{alive} of {want} nodes alive after {sys.argv[3]} s")
    time.sleep(0.2)
"""
        p = self.run(0, [str(venv_bin() / "python"), "-c", code, self.address, str(count), str(timeout)],
                     timeout=timeout + 30, capture_output=True, text=True)
        if p.returncode != 0:
            raise SimClusterError(f"the Ray cluster did not come up: {(p.stderr or p.stdout).strip()[-2000:]}")

    def add_node(self) -> SimNode:
        """A node joining the running cluster (namespace, link, daemon, Ray)."""
        with self._lock:
            if self._stopped or self.prefix is None:
                raise SimClusterError("the cluster is not running")
            node = self._start_node(len(self.nodes))
            self._wait_for_nodes(sum(n.alive for n in self.nodes))
            return node

    def kill_node(self, i: int):
        """A node failure: SIGKILL to every process in node i's namespace (its
        raylet, workers, agents, zerocopyd; on node 0 also the GCS, which ends
        the cluster). The namespace, link and segment directory stay until
        stop()."""
        node = self.nodes[i]
        _kill_namespaces([node.ns], reap=[node.daemon] if node.daemon else (), grace=0)
        node.alive = False

    # -- processes on a node --

    def link_seconds(self, nbytes) -> float:
        """Seconds to move nbytes over one link at its rate."""
        return nbytes * 8 / self.rate_bits

    def env(self, i: int, extra=None) -> dict:
        """The environment of a process on node i: this process's, plus
        RAY_ADDRESS (the head), ZEROCOPY_SOCKET (node i's daemon), PYTHONPATH
        (<build>/python first), RAY_AUTH_MODE=disabled, usage stats off,
        SIMCLUSTER_NODE / _NODES / _RATE_BITS, the cluster's env, then
        `extra`."""
        node = self.nodes[i]
        e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        e.update(self._base_env())
        e.update(self.extra_env)
        e.update(self.node_env.get(i, {}))
        e.update(RAY_ADDRESS=self.address, ZEROCOPY_SOCKET=node.socket, SIMCLUSTER_NODE=str(i),
                 SIMCLUSTER_NODES=str(len(self.nodes)), SIMCLUSTER_RATE_BITS=repr(self.rate_bits))
        e.update({k: str(v) for k, v in (extra or {}).items()})
        return e

    def _argv(self, i: int, argv) -> list:
        if self._stopped or self.prefix is None:
            raise SimClusterError("the cluster is not running")
        if isinstance(argv, (str, bytes)):
            argv = [argv]
        return [_tool("ip"), "netns", "exec", self.nodes[i].ns, *map(str, argv)]

    def run(self, i: int, argv, env=None, timeout=600, **kw) -> subprocess.CompletedProcess:
        """subprocess.run of argv in node i's namespace with env(i, env)."""
        return subprocess.run(self._argv(i, argv), env=self.env(i, env), timeout=timeout, **kw)

    def popen(self, i: int, argv, env=None, **kw) -> subprocess.Popen:
        """subprocess.Popen of argv in node i's namespace with env(i, env);
        stop() kills it with the node if it is still running."""
        return subprocess.Popen(self._argv(i, argv), env=self.env(i, env), **kw)

    def describe(self) -> str:
        lines = [f"simcluster {self.prefix}: {len(self.nodes)} nodes, {self.rate} each way per link, "
                 f"RAY_ADDRESS={self.address}"]
        for n in self.nodes:
            lines.append(f"node {n.index}  ns={n.ns}  ip={n.ip}  socket={n.socket}  resource={n.resource}"
                         f"  segments={n.segment_dir}  ray-temp={n.temp_dir}{'' if n.alive else '  (dead)'}")
        return "\n".join(lines)


# --- the command line ------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="A simulated multi-host Ray cluster (a network namespace, Ray node and zerocopyd per node, "
                    "each link rate-limited both ways). Runs CMD on node 0 with that node's environment, or "
                    "waits for Ctrl-C; then tears everything down.",
        usage="%(prog)s [--nodes N] [--rate RATE] [--build DIR] [...] [-- CMD ARGS...]")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rate", default="2gbit", help="each link's rate in both directions, tc syntax (default 2gbit)")
    ap.add_argument("--build", default="build")
    ap.add_argument("--object-store", default="2G", help="Ray object store per node (default 2G)")
    ap.add_argument("--host-budget", default="8G", help="each zerocopyd's --host-budget (default 8G)")
    ap.add_argument("--num-cpus", type=int, default=8, help="logical CPUs each Ray node declares (default 8)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for every node")
    ap.add_argument("--hold", type=float, default=8 * 3600, help="without CMD: seconds to wait for Ctrl-C at most")
    ap.add_argument("--cleanup-stale", action="store_true", help="remove leftovers of crashed runs and exit")
    args, cmd = ap.parse_known_args(argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    elif cmd:
        ap.error(f"unknown arguments {cmd} (put the command after --)")

    def on_signal(signum, frame):
        if not _STOPPING.is_set():
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    if args.cleanup_stale:
        print("removed:", " ".join(cleanup_stale()) or "nothing")
        return 0
    reason = skip_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    stale = cleanup_stale()
    if stale:
        print(f"simcluster: removed leftovers of crashed runs {' '.join(stale)}", file=sys.stderr)
    bad = [kv for kv in args.env if "=" not in kv]
    if bad:
        ap.error(f"--env takes K=V, not {bad[0]!r}")
    env = dict(kv.split("=", 1) for kv in args.env)
    cluster = SimCluster(nodes=args.nodes, rate=args.rate, build=args.build,
                         object_store_bytes=_parse_bytes(args.object_store), host_budget=args.host_budget, env=env,
                         num_cpus=args.num_cpus)
    rc = 0
    try:
        with cluster:
            print(cluster.describe(), flush=True)
            print(f"simcluster: started in {cluster.start_seconds:.1f} s", file=sys.stderr, flush=True)
            if cmd:
                proc = cluster.popen(0, cmd)
                try:
                    rc = proc.wait()
                finally:
                    if proc.poll() is None:
                        proc.terminate()
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            proc.wait(5)
            else:
                print("simcluster: Ctrl-C to stop", file=sys.stderr, flush=True)
                deadline = time.monotonic() + args.hold
                while time.monotonic() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        rc = 130
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except SimClusterError as e:
        print(f"simcluster: {e}", file=sys.stderr)
        rc = 1
    if cluster.stop_seconds is not None:
        print(f"simcluster: torn down in {cluster.stop_seconds:.1f} s", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
