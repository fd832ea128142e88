"""Pulls across a simulated multi-host cluster (bench/simcluster.py): one
network namespace per node with its own address, a 1 Gbit/s token bucket
on each node's link both ways, a Ray node and a zerocopyd in each. The
driver (simcluster_driver.py) runs on node 0; this test starts the
cluster, reads what the driver reports and does what a node failure does
(kills every process of a node). Run on its own (ctest python_simcluster):
it starts its own Ray cluster, and one test run never holds two.

Needs root, `ip` and `tc`: skipped otherwise, with the reason.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import simcluster  # noqa: E402

from ray_zerocopy import _native  # noqa: E402

NODES = 4  # node 3 serves altered chunks: pullers in the other tests are nodes 1 and 2
PULLERS = range(1, NODES - 1)
MIB = 64
DRIVER = Path(__file__).resolve().parent / "simcluster_driver.py"

reason = simcluster.skip_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def cluster():
    build = Path(os.environ.get("ZEROCOPY_BUILD", ROOT / "build"))
    # 4 MiB chunks (one leaf each): a 64 MiB model crosses in 16. Node 3
    # serves every chunk altered (its own pulls are sound).
    with simcluster.SimCluster(nodes=NODES, rate="1gbit", build=build, object_store_bytes=512 << 20,
                               host_budget="2G", env={"ZEROCOPY_PULL_CHUNK_BYTES": str(4 << 20)},
                               node_env={NODES - 1: {"ZEROCOPY_TEST_CORRUPT_SERVE": "1"}}) as c:
        yield c


class Driver:
    def __init__(self, cluster, *args):
        env = {"PYTHONPATH": os.pathsep.join([str(cluster.build / "python"), str(DRIVER.parent)]),
               "SIMCLUSTER_CORRUPT_NODE": str(NODES - 1)}
        self.proc = cluster.popen(0, [sys.executable, str(DRIVER), *args], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read(self) -> dict:
        """The driver's next report (Ray prints lines of its own there too,
        such as a dead node's missed heartbeats)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                pytest.fail(f"the driver exited ({self.proc.returncode}): {self.proc.stderr.read()[-4000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def tell(self, **what):
        self.proc.stdin.write(json.dumps(what) + "\n")
        self.proc.stdin.flush()

    def finish(self):
        try:
            self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.returncode == 0, self.proc.stderr.read()[-4000:]


def tx_bytes(cluster, i) -> int:
    """Bytes node i has sent on its link."""
    ns = cluster.nodes[i].ns
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show"], capture_output=True, text=True, check=True)
    return sum(link["stats64"]["tx"]["bytes"] for link in json.loads(out.stdout) if link["ifname"] != "lo")


def has(cluster, i, digest) -> bool:
    return any(m["digest"] == digest for m in _native.client(cluster.nodes[i].socket).list())


def staging_files(cluster, i):
    return [p for p in os.listdir(cluster.nodes[i].segment_dir) if p.startswith("staging")]


def test_a_model_reaches_every_node_through_relays_with_node_0s_link_carrying_it_about_once(cluster):
    sent_before = tx_bytes(cluster, 0)
    driver = Driver(cluster, "fanout", str(MIB))
    ready = driver.read()
    done = driver.read()
    driver.finish()
    digest = ready["digest"]
    for i in PULLERS:
        assert "error" not in done["results"][str(i)], done["results"]
        assert has(cluster, i, digest)
        assert staging_files(cluster, i) == []
    # Each node pulled from one source, the second to join from the first
    # (a relay: it served the chunks as they arrived), not from node 0.
    delivered = [p["source"] for r in done["results"].values() for p in r["pulls"] if p["digest"] == digest]
    assert len(delivered) == len(PULLERS)
    assert delivered.count(ready["node0"]) == 1, (delivered, done["sources"])
    # So node 0's link carried the model about once, not once per node.
    sent = tx_bytes(cluster, 0) - sent_before
    assert sent < 1.5 * (MIB << 20), sent


def test_a_relay_serving_altered_chunks_is_caught_at_the_chunk_and_nothing_is_committed(cluster):
    driver = Driver(cluster, "corrupt", "16")
    refused = driver.read()
    digest, ids, bad = refused["digest"], refused["ids"], str(NODES - 1)
    error = refused["refused"]["error"]
    assert error.startswith("CorruptModelError") and "altered" in error and ids[bad][:12] in error, error
    dropped = [why for p in refused["refused"]["pulls"] for node, why in p["dropped"] if node == ids[bad]]
    assert any("not the model's" in why for why in dropped), refused["refused"]["pulls"]
    assert not has(cluster, 1, digest)
    assert staging_files(cluster, 1) == []
    driver.tell(checked=True)
    done = driver.read()
    driver.finish()
    assert "error" not in done["again"], done["again"]
    assert done["again"]["pulls"][-1]["source"] == done["node0"]
    assert has(cluster, 1, digest)


def test_a_node_that_joins_while_a_fan_out_runs_gets_the_model_too(cluster):
    driver = Driver(cluster, "join", str(MIB))
    asked = driver.read()
    assert asked["event"] == "add", asked
    node = cluster.add_node()
    driver.tell(added=node.index)
    done = driver.read()
    driver.finish()
    digest, new = done["digest"], done["new"]
    assert "error" not in done["results"][str(new)], done["results"]
    assert has(cluster, new, digest)
    assert staging_files(cluster, new) == []
    for i in PULLERS:
        assert has(cluster, i, digest)
    # It pulled while the others still were: from whichever holder had the
    # fewest pulls under way then, a relay or node 0.
    pull = done["results"][str(new)]["pulls"][-1]
    assert pull["ok"] and pull["source"] in set(done["ids"].values()) | {done["node0"]}


def test_the_publisher_gone_before_anyone_finished_the_pullers_finish_from_what_they_hold_between_them(cluster):
    driver = Driver(cluster, "publisher", str(MIB))
    asked = driver.read()
    assert asked["event"] == "add", asked
    driver.tell(added=cluster.add_node().index)
    asked = driver.read()
    assert asked["event"] == "kill", asked  # not "missed": someone finished, or they never covered the model
    cluster.kill_node(asked["node"])
    driver.tell(killed=asked["node"])
    done = driver.read()
    driver.finish()
    digest, ids, gone = done["digest"], done["ids"], done["ids"][str(done["publisher"])]
    held = {n: set(v["have"]) for n, v in done["held"].items() if n != gone}
    assert all(0 < len(h) < done["chunks"] for h in held.values()), held  # each had part of it
    assert not any("error" in r for r in done["results"].values()), json.dumps(done, indent=1)
    for i in PULLERS:
        r = done["results"][str(i)]
        assert has(cluster, i, digest)
        assert staging_files(cluster, i) == []
        # It lost the publisher on the way and got the rest from the other puller.
        pull = r["pulls"][-1]
        assert gone in [node for node, _ in pull["dropped"]], pull
        assert pull["source"] == ids[str(3 - i)], (pull, ids)


def test_a_relay_killed_mid_transfer_its_pullers_finish_from_other_holders(cluster):
    driver = Driver(cluster, "kill", str(MIB))
    asked = driver.read()
    assert asked["event"] == "kill", asked
    cluster.kill_node(asked["node"])
    driver.tell(killed=asked["node"])
    done = driver.read()
    driver.finish()
    digest = done["digest"]
    survivors = [i for i in PULLERS if i != done["relay"]]
    for i in survivors:
        assert "error" not in done["results"][str(i)], done["results"]
        assert has(cluster, i, digest)
        assert staging_files(cluster, i) == []
    # Someone's pull lost its source (the relay) and carried on.
    dropped = [node for r in done["results"].values() for p in r["pulls"] for node, _ in p["dropped"]]
    assert done["ids"][str(done["relay"])] in dropped, done["results"]
