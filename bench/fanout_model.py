"""A model of how long a model takes to reach every node of a cluster, with
its parameters measured on the simulated cluster (bench section 8), checked
against the fan-outs measured there and projected to 50 and 500 nodes at
10 and 100 Gbit/s.

Ours (relayed pulls, _cluster.py): pullers that start together form a
chain, each node's link carrying the model once, chunks forwarded as they
arrive. The last node has its first chunk after every hop has passed one
on, and its last one a link-time later:

    links:  T = t0 + S/B + (N - 2) * (c/B + h)          while N - 2 <= D
            T = t0 + 2 * S/B + D * (2 * c/B + h)        beyond
    cores:  T = t0 + (N - 1) * k * S / P      (on the simulated cluster only)
    T_ours(N) = max(links, cores)

D (_directory.MAX_DEPTH, 16) bounds a chain's relays: past it a puller
branches off a shallower holder, which then serves two, each at half its
link's rate, so a large cluster is a tree of chains of depth D at most.

S the model's bytes, B a link's rate (bytes/s), c the chunk (8 MiB), N - 1
pullers. Measured from the runs, not fitted to their totals:
- h, what a relay adds to each chunk (noticing it arrived, checking its
  leaves, the copy into its object store, Ray's hand-off): from each run's
  chain (every pull's source) and the time each node's first chunk
  arrived, the median step from one depth of the chain to the next, less
  c/B;
- t0, a pull's fixed cost: the first puller's wait for its first chunk plus
  the last node's commit and map after its last chunk (medians);
- k, the CPU seconds a pull costs per byte here (all of it: Ray's transfer,
  the kernel's networking through veth, bridge and token buckets, our
  checks and copies, the commit's hash): the machine's busy CPU seconds
  during a run over the bytes pulled. On the simulated cluster every node
  shares P = 2 cores, so the cores bind as soon as (N - 1) * k * S / P
  passes the links' time; on real nodes, each with cores of its own, that
  term is k * S / cores-per-node and the links bind.

Ray's broadcast as measured here (ray.get of one object on every node at
once): every node pulls from the one that holds it, so the source's link
carries it N - 1 times:

    T_ray(N) = (N - 1) * S/B

(Ray's object manager does fetch from any node that holds a whole copy,
so later pullers can find more sources; when all start together, as a
job's actors do, nobody holds a copy until the first finishes, and the
measured times grow as N - 1 link-times.) Ray's own release test
publishes its broadcast of 1 GiB to 50 nodes: about 17 s.

    fanout_model.py results.json   (prints the parameters, the check and the projection)
"""
import json
import sys

CHUNK = 8 << 20  # _cluster.CHUNK_BYTES
MAX_DEPTH = 16  # _directory.MAX_DEPTH
RAY_PUBLISHED = {"nodes": 50, "bytes": 1 << 30, "seconds": 17.0,
                 "source": "Ray's release test broadcasting 1 GiB to 50 nodes (object store), about 17 s"}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _warm(side: dict) -> list:
    """The runs after the first (cold) one, or all if there is one."""
    return side["runs"][1:] or side["runs"]


def fit(fanouts: list) -> dict:
    """t0, h, k from the runs (see the module's comment); {} without runs."""
    runs = [f for f in fanouts if "error" not in f]
    if not runs:
        return {}
    steps, t0s, ks = [], [], []
    for f in runs:
        B = f["rate_bits"] / 8
        index_of = {nid: int(i) for i, nid in (f.get("node_ids") or {}).items()}  # a node's id -> its index
        for run in _warm(f["ours"]):
            nodes = {int(i): v for i, v in run["per_node"].items()}
            # Depth in the chain: 1 for a node that pulled from node 0 (no
            # receiver), one more than its source's otherwise.
            depth = {}
            for i in nodes:
                d, cur, seen = 1, nodes[i].get("source"), set()
                while cur in index_of and index_of[cur] in nodes and index_of[cur] not in seen:
                    seen.add(index_of[cur])
                    d += 1
                    cur = nodes[index_of[cur]].get("source")
                depth[i] = d
            firsts = {}
            for i, v in nodes.items():
                if v.get("first_chunk_s") is not None:
                    firsts.setdefault(depth[i], []).append(v["first_chunk_s"])
            for d in sorted(firsts):
                if d + 1 in firsts:
                    steps.append(max(0.0, min(firsts[d + 1]) - min(firsts[d]) - CHUNK / B))
            last = max(nodes.values(), key=lambda v: v["done_s"])
            if firsts.get(1) and last.get("last_chunk_s") is not None:
                t0s.append(min(firsts[1]) + last["call_s"] - last["last_chunk_s"])
            ks.append(run["cpu_s"] / ((f["nodes"] - 1) * f["bytes"]))
    if not ks:
        return {}
    return {"t0": _median(t0s) if t0s else 0.0, "h": _median(steps) if steps else 0.0, "k": _median(ks),
            "cores": 2, "chunk": CHUNK, "max_depth": MAX_DEPTH}


def ours(m, nodes, nbytes, rate_bits, shared_cores=False):
    B = rate_bits / 8
    D = m.get("max_depth", MAX_DEPTH)
    if nodes - 2 <= D:
        links = m["t0"] + nbytes / B + max(0, nodes - 2) * (m["chunk"] / B + m["h"])
    else:
        links = m["t0"] + 2 * nbytes / B + D * (2 * m["chunk"] / B + m["h"])
    if not shared_cores:
        return links
    return max(links, m["t0"] + (nodes - 1) * m["k"] * nbytes / m["cores"])


def ray(m, nodes, nbytes, rate_bits):
    return (nodes - 1) * nbytes / (rate_bits / 8)


def points(fanouts: list) -> list:
    """(nodes, bytes, bytes/s, ours_s, ray_s) for each measured fan-out."""
    return [(f["nodes"], f["bytes"], f["rate_bits"] / 8, f["ours"]["max_s_median"], f["ray"]["max_s_median"])
            for f in fanouts if "error" not in f]


def check(m, fanouts) -> list:
    """Measured against modelled, per fan-out (the simulated cluster: shared cores)."""
    rows = []
    for n, S, B, o, r in points(fanouts):
        rows.append({"nodes": n, "mib": S >> 20, "gbit": B * 8 / 1e9, "ours_s": o,
                     "ours_model_s": ours(m, n, S, B * 8, shared_cores=True), "ray_s": r,
                     "ray_model_s": ray(m, n, S, B * 8), "link_s": S / B})
    return rows


def project(m) -> list:
    """1 GiB to 50 and 500 nodes with their own cores (links bind)."""
    rows = []
    for gbit in (10, 100):
        for nodes in (50, 500):
            S = 1 << 30
            rows.append({"nodes": nodes, "gbit": gbit, "mib": 1024, "link_s": S * 8 / (gbit * 1e9),
                         "ours_s": ours(m, nodes, S, gbit * 1e9), "ray_s": ray(m, nodes, S, gbit * 1e9),
                         "cpu_per_node_s": m["k"] * S})
    return rows


def main():
    r = json.load(open(sys.argv[1]))
    fanouts = r.get("fan_out", {}).get("runs", [])
    m = fit(fanouts)
    print(json.dumps({"model": m, "check": check(m, fanouts), "projection": project(m),
                      "ray_published": RAY_PUBLISHED}, indent=1))


if __name__ == "__main__":
    main()
