"""A model of how long a model takes to reach every node of a cluster, fitted
to the fan-outs measured on the simulated cluster (bench section 8) and
projected to 50 and 500 nodes at 10 and 100 Gbit/s.

Ours (relayed pulls, _cluster.py): pullers that start together form a
chain, each node's link carrying the model once, chunks forwarded as they
arrive. The last node has its first chunk after every hop has passed one
on, and its last one a link-time later:

    T_ours(N) = t0 + S/B + (N - 2) * (c/B + h)

S the model's bytes, B a link's rate (bytes/s), c the chunk (8 MiB), h
what a relay adds to each chunk (noticing it arrived, checking its
leaves, the copy into its object store, Ray's hand-off), t0 a pull's fixed
cost (asking the directory, starting the source's generator, the daemon's
digest check at commit, the map). N - 1 pullers, N - 2 relays.

Ray's broadcast as measured here (ray.get of one object on every node at
once): every node pulls from the one that holds it, so the source's link
carries it N - 1 times:

    T_ray(N) = r0 + (N - 1) * S/B

(Ray's object manager does fetch from any node that holds a whole copy,
so later pullers can find more sources; when all start together, as a
job's actors do, nobody holds a copy until the first finishes, and the
measured times grow as N - 1 link-times.) Ray's own release test
publishes its broadcast of 1 GiB to 50 nodes: about 17 s.

The fit is least squares over the measured runs (t0, h; r0). On the
simulated cluster every node shares this machine's two cores, so the
fitted h includes CPU contention that grows with N: the projection from it
is pessimistic for real nodes, each with cores of its own.

    fanout_model.py results.json   (prints the fit, the check and the projection)
"""
import json
import sys

CHUNK = 8 << 20
RAY_PUBLISHED = {"nodes": 50, "bytes": 1 << 30, "seconds": 17.0,
                 "source": "Ray's release test broadcasting 1 GiB to 50 nodes (object store), about 17 s"}


def _lstsq(rows, ys):
    """Least squares for a few unknowns (normal equations), non-negative."""
    n = len(rows[0])
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    aty = [sum(r[i] * y for r, y in zip(rows, ys)) for i in range(n)]
    # Gaussian elimination
    m = [row[:] + [b] for row, b in zip(ata, aty)]
    for i in range(n):
        p = max(range(i, n), key=lambda k: abs(m[k][i]))
        m[i], m[p] = m[p], m[i]
        if abs(m[i][i]) < 1e-12:
            return [0.0] * n
        for k in range(n):
            if k != i:
                f = m[k][i] / m[i][i]
                m[k] = [a - f * b for a, b in zip(m[k], m[i])]
    return [max(0.0, m[i][n] / m[i][i]) for i in range(n)]


def points(fanouts: list) -> list:
    """(nodes, bytes, bytes/s, ours_s, ray_s) for each measured fan-out."""
    out = []
    for f in fanouts:
        if "error" in f:
            continue
        B = f["rate_bits"] / 8
        out.append((f["nodes"], f["bytes"], B, f["ours"]["max_s_median"], f["ray"]["max_s_median"]))
    return out


def fit(fanouts: list) -> dict:
    pts = points(fanouts)
    if len({n for n, *_ in pts}) < 2:
        return {}  # t0 and h need two node counts at least (make bench-quick has one)
    t0, h = _lstsq([[1.0, max(0, n - 2)] for n, S, B, _, _ in pts],
                   [o - S / B - max(0, n - 2) * CHUNK / B for n, S, B, o, _ in pts])
    (r0,) = _lstsq([[1.0] for _ in pts], [r - (n - 1) * S / B for n, S, B, _, r in pts])
    return {"t0": t0, "h": h, "r0": r0, "chunk": CHUNK}


def ours(m, nodes, nbytes, rate_bits):
    B = rate_bits / 8
    return m["t0"] + nbytes / B + max(0, nodes - 2) * (m["chunk"] / B + m["h"])


def ray(m, nodes, nbytes, rate_bits):
    return m["r0"] + (nodes - 1) * nbytes / (rate_bits / 8)


def check(m, fanouts) -> list:
    """Measured against modelled, per fan-out."""
    rows = []
    for n, S, B, o, r in points(fanouts):
        rows.append({"nodes": n, "mib": S >> 20, "gbit": B * 8 / 1e9, "ours_s": o, "ours_model_s": ours(m, n, S, B * 8),
                     "ray_s": r, "ray_model_s": ray(m, n, S, B * 8), "link_s": S / B})
    return rows


def project(m) -> list:
    rows = []
    for gbit in (10, 100):
        for nodes in (50, 500):
            S = 1 << 30
            rows.append({"nodes": nodes, "gbit": gbit, "mib": 1024, "link_s": S * 8 / (gbit * 1e9),
                         "ours_s": ours(m, nodes, S, gbit * 1e9), "ray_s": ray(m, nodes, S, gbit * 1e9)})
    return rows


def main():
    r = json.load(open(sys.argv[1]))
    fanouts = r.get("fan_out", {}).get("runs", [])
    m = fit(fanouts)
    print(json.dumps({"model": m, "check": check(m, fanouts), "projection": project(m),
                      "ray_published": RAY_PUBLISHED}, indent=1))


if __name__ == "__main__":
    main()
