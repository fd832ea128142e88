"""Markdown tables and PNG plots from bench.py's results.json; also usable
alone: `report.py RESULTS_DIR` rewrites results.md and the plots."""
import json
import statistics
import sys
from pathlib import Path

MiB, GiB = 2**20, 2**30
REF_PROCESS = "ours ActorWrapper.load()"
REF_ACTOR = "ours ActorWrapper.load() in a Ray actor"
HUGE = "huge-page segments (the package's default)"  # bench.py's


def t(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def size(mib):
    mib = int(mib)
    return f"{mib // 1024} GiB" if mib >= 1024 else f"{mib} MiB"


def cell(s, ref=None):
    if not s:
        return "-"
    text = f"{t(s['median'])} ({t(s['min'])}–{t(s['max'])})"
    if ref and ref.get("median"):
        text += f", ×{s['median'] / ref['median']:,.0f}" if s["median"] / ref["median"] >= 10 else \
            f", ×{s['median'] / ref['median']:.1f}"
    return text


def why(error: str) -> str:
    """The line of a failure's output that says why (not Ray's banners)."""
    lines = [x.strip() for x in error.strip().splitlines() if x.strip()]
    for x in reversed(lines):
        if any(w in x for w in ("Error", "error:", "Killed", "OOM", "out of memory", "MemoryError")):
            return x[:300]
    return lines[-1][:300] if lines else "?"


def gpu_lines(g):
    """Section 6 for one model size, or why it was skipped."""
    if "skipped" in g:
        return ["## 6. GPU", "", g["skipped"], ""]
    ours = g["load"]["ours: attach to the shared copy"]
    lines = [f"## 6. GPU ({size(g['mib'])} model on cuda:0)", "",
             "Fresh processes, timed after torch's own CUDA start: ours attach to the daemon's one device copy; the "
             "alternative copies the host-mapped model to the GPU itself. The first attach on a GPU makes the copy: "
             f"{t(g['first attach (makes the device copy)'])}.", "",
             "| method | time until the model is on the GPU |", "|---|---|"]
    for k, v in g["load"].items():
        lines.append(f"| {k} | {cell(v, None if v is ours else ours)} |")
    lines += ["", "Device memory used while N processes hold the model (drop in free memory, CUDA contexts "
              "included; for ours also zerocopyd's copy and its context):", "",
              "| method | 1 process | 4 processes |", "|---|---|---|"]
    for k, per_n in g["memory"].items():
        lines.append(f"| {k} | " + " | ".join(f"{per_n[str(n)]['device_bytes'] / MiB:,.0f} MiB" for n in (1, 4)) + " |")
    return lines + [""]


def markdown_gpu_only(r):
    m = r["machine"]
    lines = ["# zerocopy benchmarks: GPU", "",
             f"Section 6 alone (`bench.py --gpu-only`) in {r['wall_seconds']:.0f} s on {m.get('gpu', '?')} "
             f"({m.get('gpu_memory_gib', '?')} GiB), {m.get('cpu', '?')}, {m['cores']} cores, {m.get('MemTotal', '?')} "
             f"memory, kernel {m['kernel']}; torch {m['torch']}. Each cell: median (min–max) of several runs; ×N is "
             "the ratio against ours.", ""]
    for mib, g in r["gpu_sizes"].items():
        lines += gpu_lines(g)
    return "\n".join(lines)


def markdown(r):
    if r.get("gpu_only"):
        return markdown_gpu_only(r)
    m = r["machine"]
    lines = ["# zerocopy benchmarks", "",
             f"{'Quick run' if r['quick'] else 'Full run'} in {r['wall_seconds']:.0f} s on {m.get('cpu', '?')}, "
             f"{m['cores']} cores, {m.get('MemTotal', '?')} memory, kernel {m['kernel']}, transparent huge pages "
             f"`{m['thp_enabled']}` (shmem `{m['thp_shmem_enabled']}`), {m.get('HugePages_Total', '?')} reserved huge "
             f"pages; torch {m['torch']}, Ray {m['ray']}. Each cell: median (min–max) of several runs; ×N is the "
             f"ratio against ours (how many times longer).", ""]
    sizes = [str(s) for s in r["sizes_mib"]]
    models = r["model"]
    lines += ["## 1. Load time until the model is usable", "",
              "Fresh process (or fresh Ray actor), model already on the node: ours maps the shared copy; "
              "`torch.load` reads the file from the page cache; ray-zerocopy 0.2.0 rebuilds from Ray's object store; "
              "by value deserializes the pickled model from Ray's object store. "
              f"Ratios of process rows against `{REF_PROCESS}`, of Ray actor rows against `{REF_ACTOR}`.", "",
              "| method | " + " | ".join(f"{size(s)} ({models[s]['tensors']} tensors)" for s in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    methods = []
    for s in sizes:
        for k in r["load"][s]:
            if k not in methods:
                methods.append(k)
    for k in methods:
        row = []
        for s in sizes:
            ref = r["load"][s].get(REF_ACTOR if "actor" in k.lower() else REF_PROCESS)
            row.append(cell(r["load"][s].get(k), None if k in (REF_PROCESS, REF_ACTOR) else ref))
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    lines.append("")

    if "memory" in r:
        mem = r["memory"]
        lines += [f"## 2. Memory: N actors holding the {size(mem['mib'])} model", "",
                  "A Ray Data `map_batches` pool (`ActorPoolStrategy(size=N)`); every actor has run a forward pass "
                  "(all weights touched). Σ PSS and Σ RSS over the actor processes, read from "
                  "`/proc/PID/smaps_rollup` while all of them hold the model; the PSS of the raylet (where Ray's "
                  "object store lives) and zerocopyd, which share pages with the actors; the total of both; Ray's "
                  "object store usage.", "",
                  "| method | N | Σ PSS actors | Σ RSS actors | PSS raylet + zerocopyd | total PSS | object store "
                  "| total ×ours |", "|---|---|---|---|---|---|---|---|"]
        ours = mem["results"].get("ours", {})
        for method, per_n in mem["results"].items():
            for n, v in per_n.items():
                total = v["pss"] + v.get("node_pss", 0)
                ref = ours.get(n)
                ratio = f"×{total / (ref['pss'] + ref.get('node_pss', 0)):.1f}" if ref and method != "ours" else ""
                store = "-" if v.get("object_store") is None else f"{v['object_store'] / MiB:,.0f} MiB"
                err = f" ({v['error'][:60]})" if v.get("error") else ""
                lines.append(f"| {method}{err} | {n} | {v['pss'] / MiB:,.0f} MiB | {v['rss'] / MiB:,.0f} MiB | "
                             f"{v.get('node_pss', 0) / MiB:,.0f} MiB | {total / MiB:,.0f} MiB | {store} | {ratio} |")
        lines.append("")

    if "first_forward" in r:
        ff = r["first_forward"]
        lines += [f"## 3. First forward pass after load ({size(ff['mib'])} model)", "",
                  "| segments | load | first forward | warm forward | first / warm |", "|---|---|---|---|---|"]
        for k, v in ff["results"].items():
            ratio = v["first_seconds"]["median"] / v["warm_seconds"]["median"]
            lines.append(f"| {k} | {cell(v['load_seconds'])} | {cell(v['first_seconds'])} | "
                         f"{cell(v['warm_seconds'])} | {ratio:.1f} |")
        if ff.get("note"):
            lines += ["", ff["note"]]
        lines.append("")

    if "publish" in r:
        pub = r["publish"]
        memcpy = pub["results"].get("memcpy into fresh shared memory")
        lines += [f"## 4. Publish throughput ({size(pub['mib'])})", "",
                  "| method | time | GiB/s | of memcpy's bandwidth |", "|---|---|---|---|"]
        for k, v in pub["results"].items():
            frac = f"{memcpy['median'] / v['median']:.0%}" if memcpy else "-"
            lines.append(f"| {k} | {cell(v)} | {v['gib_per_s']:.2f} | {frac} |")
        lines.append("")

    if "getmodel" in r:
        lines += ["## 5. GetModel round trip over the unix socket", "",
                  "Each client its own channel and connection (as separate processes have), calling in a loop "
                  "(C++ client). Beside it the gRPC health check on the same socket: what any unary gRPC call "
                  "costs on this machine.", "",
                  "GetModel raw: the same call made as the health check is made (gRPC's generic stub, no deadline, "
                  "the response left unparsed): the daemon's and the transport's share, without the client "
                  "library's. As a message: the generated stub asking for the manifest as a message and parsing "
                  "it every call, as every GetModel did before `manifest_as_bytes`. The health check is made "
                  "both bare and with the 30 s deadline the client library gives every call, GetModel included.",
                  "",
                  "| concurrent clients | GetModel calls/s | p50 | p99 | errors | raw calls/s | p50 | p99 "
                  "| as a message calls/s | p50 | p99 | health check calls/s | p50 | p99 "
                  "| health check with a deadline calls/s | p50 | p99 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, v in r["getmodel"].items():
            cells = [f"{v['calls_per_s']:,.0f} | {v['p50_us']:.0f} µs | {v['p99_us']:.0f} µs | {v['errors']}"]
            for k in ("raw", "message", "health", "health_deadline"):
                o = v.get(k, {})
                cells.append(f"{o.get('calls_per_s', 0):,.0f} | {o.get('p50_us', 0):.0f} µs | "
                             f"{o.get('p99_us', 0):.0f} µs")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    if "first_map" in r:
        lines += ["### The first map of a fresh process (C++ client), step by step", "",
                  "| path | step | median | min | max |", "|---|---|---|---|---|"]
        steps = (("create_ms", "Client::Create"), ("session_ms", "channel + Session stream + Hello"),
                 ("map_ms", "the map (Map: GetModel with its lease + mmap; MapSegment: the sealed files + mmap)"),
                 ("first_total_ms", "first map, in all"), ("second_map_ms", "a second Map, same process"),
                 ("lease_held_after_ms", "until the background lease is held"))
        for path, fm in r["first_map"].items():
            for key, label in steps:
                if key in fm:
                    v = fm[key]
                    lines.append(f"| {path} | {label} | {v['median'] * 1000:.2f} ms | {v['min'] * 1000:.2f} ms | "
                                 f"{v['max'] * 1000:.2f} ms |")
        lines.append("")
    if "jit_load" in r:
        j = r["jit_load"]
        lines += ["### TorchScript load in a fresh process (a ~4 MiB model with control flow)", "",
                  "| method | median | min | max |", "|---|---|---|---|"]
        for k, v in j.items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v['median'] * 1000:.2f} ms | {v['min'] * 1000:.2f} ms | "
                             f"{v['max'] * 1000:.2f} ms |")
        lines += ["", f"ours / torch.jit.load: ×{j['ratio']:.2f}", ""]
    if "many_tensors" in r:
        mt = r["many_tensors"]
        n = mt["tensors"]
        ours = mt["ours load_state_dict()"]
        lines += [f"### {n:,} small tensors in a fresh process: the cost per tensor", "",
                  "| method | time | per tensor |", "|---|---|---|"]
        for k, v in mt.items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {cell(v, None if v is ours else ours)} | {v['median'] / n * 1e6:.1f} µs |")
        lines.append("")
    lines += gpu_lines(r.get("gpu", {"skipped": "not measured"}))
    lines += across_nodes_lines(r.get("across_nodes"))
    lines += fan_out_lines(r.get("fan_out"))
    lines += hugging_face_lines(r.get("hugging_face"))
    lines += exported_lines(r.get("exported"))
    if r.get("errors"):
        lines += ["## Failed measurements", ""] + [f"- {k}: `{why(v)}`" for k, v in r["errors"].items()] + [""]
    lines += targets(r)
    lines += waits(r)
    return "\n".join(lines)


def waits(r):
    """Every path a user waits on, ours against its alternative from this
    same run, with the goal of issue #18 and whether it is met."""
    rows = []

    def row(path, ours, theirs, ratio, goal, met):
        rows.append(f"| {path} | {ours} | {theirs} | {ratio} | {goal} | {'met' if met else '**NOT met**'} |")

    detail = str(r["sizes_mib"][0])  # the issue measured 256 MiB
    load = r["load"].get(detail, {})
    for ours_key, their_key, what, goal in (
            (REF_ACTOR, "ray-zerocopy 0.2.0 load() in a Ray actor", "`ActorWrapper.load()` in a fresh Ray actor "
             "vs ray-zerocopy 0.2.0", 0.5),
            ("ours ActorWrapper.load() to first output in a Ray actor",
             "ray-zerocopy 0.2.0 load() to first output in a Ray actor",
             "from `load()` to the first forward pass's output in a fresh Ray actor vs ray-zerocopy 0.2.0", 0.7)):
        # Segments on /dev/shm (4 KiB pages), then on the package's tmpfs.
        for variant, key in (("", ours_key), (f", {HUGE}", f"{ours_key}, {HUGE}")):
            a, b = load.get(key), load.get(their_key)
            if a and b:
                x = a["median"] / b["median"]
                row(f"{what} ({size(detail)}{variant})", t(a["median"]), t(b["median"]), f"×{x:.2f}", f"≤ ×{goal}",
                    x <= goal)
        warm = load.get(their_key.replace("load() to first output in a", "warm forward pass in a"))
        if warm and "first output" in their_key and load.get(their_key):
            # No first output can beat a warm pass with the same threads.
            b = load[their_key]["median"]
            rows.append(f"| the floor under both: a warm forward pass in the same actor (ray-zerocopy's; ours alike) "
                        f"| {t(warm['median'])} | ×{goal} of theirs: {t(goal * b)} | ×{warm['median'] / b:.2f} "
                        f"| | {'the goal is below it' if warm['median'] > goal * b else 'the goal is above it'} |")
    if "first_map" in r and "MapSegment" in r["first_map"]:
        seg, rt = r["first_map"]["MapSegment"]["first_total_ms"], r["first_map"]["Map"]["first_total_ms"]
        row("first map in a fresh process, C++ client (a wrapper's path: `MapSegment`) vs `Map` (round trips "
            "first)", t(seg["median"]), t(rt["median"]), f"×{seg['median'] / rt['median']:.2f}", "≤ 0.5 ms",
            seg["median"] <= 0.5e-3)
    if "many_tensors" in r:
        mt = r["many_tensors"]
        a, b = mt["ours load_state_dict()"], mt["torch.load (page cache)"]
        per = a["median"] / mt["tensors"]
        row(f"per tensor, `load_state_dict` of {mt['tensors']:,} tensors vs `torch.load`", f"{per * 1e6:.1f} µs",
            f"{b['median'] / mt['tensors'] * 1e6:.1f} µs", f"×{a['median'] / b['median']:.2f}", "≤ 5 µs", per <= 5e-6)
    if "publish" in r:
        p = r["publish"]["results"]
        memcpy = p["memcpy into fresh shared memory"]
        huge_memcpy = p.get(f"memcpy into fresh shared memory, {HUGE}")
        for fmt in ("safetensors", "torch.save"):
            # The alternative is memcpy into /dev/shm; into the
            # package's tmpfs, memcpy into that tmpfs is said beside it.
            for variant, base in (("", None), (f", {HUGE}", huge_memcpy)):
                key = f"CLI preload ({fmt}){variant}"
                if key in p:
                    frac = memcpy["median"] / p[key]["median"]
                    also = f" (memcpy into that tmpfs: {base['gib_per_s']:.2f} GiB/s)" if base else ""
                    row(f"`zerocopy preload`, {fmt} ({size(r['publish']['mib'])}{variant}) vs memcpy into fresh "
                        "shared memory", f"{p[key]['gib_per_s']:.2f} GiB/s", f"{memcpy['gib_per_s']:.2f} GiB/s{also}",
                        f"{frac:.0%}", "≥ 75%", frac >= 0.75)
    if "getmodel" in r:
        g = r["getmodel"]
        many = g.get("64") or list(g.values())[-1]
        # Like for like: the health check with the deadline every call of
        # ours has (older results lack it: the bare one).
        bare = many.get("health", {})
        timed = many.get("health_deadline") or bare
        for what, v, h in (("GetModel at 64 clients (a connection each) vs a gRPC health check on the same socket "
                            "with the same deadline", many, timed),
                           ("the same GetModel vs the bare health check (no deadline)", many, bare),
                           ("the same, GetModel made as the bare health check is (no client library, no deadline: "
                            "the daemon's share)", many.get("raw", {}), bare),
                           ("the same, the manifest as a message parsed every call (before `manifest_as_bytes`)",
                            many.get("message", {}), timed)):
            if h.get("p50_us") and v.get("p50_us"):
                p50, p99 = v["p50_us"] / h["p50_us"], v["p99_us"] / h["p99_us"]
                row(what, f"p50 {v['p50_us']:.0f} µs, p99 {v['p99_us']:.0f} µs",
                    f"p50 {h['p50_us']:.0f} µs, p99 {h['p99_us']:.0f} µs", f"p50 ×{p50:.2f}, p99 ×{p99:.2f}",
                    "p50 ≤ ×1.3, p99 ≤ ×1.5", p50 <= 1.3 and p99 <= 1.5)
    if "jit_load" in r:
        j = r["jit_load"]
        a, b = j["ours JITActorWrapper.load()"], j["torch.jit.load(file)"]
        row("TorchScript load (~4 MiB, control flow) in a fresh process vs `torch.jit.load(file)`", t(a["median"]),
            t(b["median"]), f"×{j['ratio']:.2f}", "≤ ×1.0", j["ratio"] <= 1.0)
    if not rows:
        return []
    return ["## The paths a user waits on (issue #18's table)", "",
            "Each row: ours and its alternative from this same run, medians.", "",
            "| path | ours | alternative | ratio | goal | |", "|---|---|---|---|---|---|", *rows, ""]


def targets(r):
    """DESIGN.md's targets, each said plainly: met or not, with the numbers."""
    out = ["## Against the targets (DESIGN.md)", ""]
    load = r["load"]
    sizes = [str(s) for s in r["sizes_mib"]]
    ours = [load[s][REF_PROCESS]["median"] for s in sizes]
    torchl = [load[s]["torch.load (page cache)"]["median"] for s in sizes]
    flat = max(ours) / min(ours)
    out.append(f"- load() of a wrapped model: {', '.join(f'{size(s)} {t(v)}' for s, v in zip(sizes, ours))} "
               f"(largest/smallest ×{flat:.1f}); {'met' if max(ours) < 0.02 and flat < 3 else 'NOT met'} "
               f"(target: a few milliseconds, flat from 256 MiB to 4 GiB).")
    speedups = [b / a for a, b in zip(ours, torchl)]
    at_1g = dict(zip(sizes, speedups)).get("1024")
    verdict = "not measured at 1 GiB" if at_1g is None else ("met" if at_1g >= 100 else "NOT met")
    shown = ", ".join(f"{size(s)} ×{x:,.0f}" for s, x in zip(sizes, speedups))
    out.append(f"- against torch.load from page cache: {shown} ({verdict}: at least ×100 for a 1 GiB model).")
    if "memory" in r:
        per_n = r["memory"]["results"].get("ours", {})
        ns = sorted(per_n, key=int)
        if len(ns) > 1:
            def total(v):
                return v["pss"] + v.get("node_pss", 0)
            grow = (total(per_n[ns[-1]]) - total(per_n[ns[0]])) / (int(ns[-1]) - int(ns[0]))
            base = r["memory"]["results"].get("baseline", {})
            other = ""
            if ns[0] in base and ns[-1] in base:
                per_actor = (total(base[ns[-1]]) - total(base[ns[0]])) / (int(ns[-1]) - int(ns[0]))
                other = f"; ray-zerocopy 0.2.0 grows by {per_actor / MiB:,.0f} MiB per actor"
            out.append(f"- Σ PSS per extra actor: {grow / MiB:,.1f} MiB{other} "
                       f"({'met' if grow < 64 * MiB else 'NOT met'}: a few MiB per extra process beyond the process "
                       f"itself; this measures whole processes, so it includes each Ray worker's own interpreter, "
                       f"torch and Ray heap, which every method pays alike; the weights themselves are one copy: "
                       f"the segment's PSS summed over the actors is 1.00x the model in tests/python/test_ray.py).")
    if "first_forward" in r:
        v = r["first_forward"]["results"]
        best = min(v, key=lambda k: v[k]["first_seconds"]["median"] / v[k]["warm_seconds"]["median"])
        ratio = v[best]["first_seconds"]["median"] / v[best]["warm_seconds"]["median"]
        out.append(f"- first forward against a warm one: ×{ratio:.1f} with {best} "
                   f"({'met' if ratio < 2 else 'NOT met'}: close to a warm one).")
    if "publish" in r:
        p = r["publish"]["results"]
        frac = p["memcpy into fresh shared memory"]["median"] / p["python ModelWrapper.from_model"]["median"]
        out.append(f"- publish, hashing included: {frac:.0%} of memcpy's bandwidth from Python "
                   f"({'met' if frac >= 0.5 else 'NOT met'}: a large fraction).")
    if "getmodel" in r:
        g = r["getmodel"]
        one, many = list(g.values())[0], list(g.values())[-1]
        met = one["p50_us"] < 100 and many["errors"] == 0
        out.append(f"- GetModel p50 {one['p50_us']:.0f} µs with one client (a bare gRPC health check: "
                   f"{one.get('health', {}).get('p50_us', 0):.0f} µs), p99 {many['p99_us']:.0f} µs and "
                   f"{many['calls_per_s']:,.0f} calls/s at 64 clients, {many['errors']} errors "
                   f"({'met' if met else 'NOT met'}: tens of microseconds, holding under 64 clients).")
    x = r.get("across_nodes") or {}
    if x.get("sizes"):
        ratios = {k: v["throughput_ratio"] for k, v in x["sizes"].items()}
        peak = max(v["ours_store_peak"] for v in x["sizes"].values())
        met = min(ratios.values()) >= 0.8 and peak <= 256 * MiB
        out.append(f"- across nodes: a fresh node gets the model at "
                   f"{', '.join(f'×{v:.2f} ({size(k)})' for k, v in ratios.items())} the throughput of a plain "
                   f"ray.get of the same bytes, object store peak {peak / MiB:,.0f} MiB "
                   f"({'met' if met else 'NOT met'}: ≥ ×0.8, peak ≤ 256 MiB whatever the size).")
    for f in (r.get("fan_out") or {}).get("runs", []):
        if "error" in f:
            continue
        ours, theirs, link = f["ours"]["max_s_median"], f["ray"]["max_s_median"], f["link_s"]
        if f["nodes"] == 2:
            out.append(f"- one pull at {f['rate']}, {size(f['mib'])}: ours {t(ours)} against ray.get's {t(theirs)} "
                       f"of the same bytes, ×{ours / theirs:.2f} ({'met' if ours <= 1.1 * theirs else 'NOT met'}: "
                       "≤ ×1.1).")
            continue
        goal = 1.5 * link + 1
        ratio_goal = 0.3 if f["nodes"] >= 8 else None
        met = ours <= goal and (ratio_goal is None or ours <= ratio_goal * theirs)
        out.append(f"- fan-out to {f['nodes']} nodes at {f['rate']}, {size(f['mib'])}: ours {t(ours)} = "
                   f"{ours / link:.1f} link-times, ×{ours / theirs:.2f} Ray's broadcast ({t(theirs)}) "
                   f"({'met' if met else 'NOT met'}: ≤ 1.5 link-times + 1 s = {t(goal)}"
                   f"{', ≤ ×0.3 Ray' if ratio_goal else ''}).")
    out.append("")
    return out


def fan_out_lines(x):
    """Section 8 (simcluster.py, bench_fanout.py, fanout_model.py)."""
    if not x:
        return []
    if "skipped" in x:
        return ["## 8. Fan-out on a simulated multi-host cluster", "", f"skipped: {x['skipped']}", ""]
    lines = ["## 8. Fan-out on a simulated multi-host cluster", "",
             "One network namespace per node with a token-bucket link each way, a Ray node and a zerocopyd in "
             "each, the driver on node 0 (bench/simcluster.py). Time until every other node holds a model "
             "published on node 0: ours, `ActorWrapper.load()` in a warm actor on every node at once (relayed "
             "pulls); Ray, `ray.get` of as many bytes `ray.put` on node 0, on every node at once; the published "
             "ray-zerocopy 0.2.0, `ModelWrapper.from_model` on node 0 and `load()` on every node at once (its "
             "weights by `ray.put` and `ray.get`), a second driver on the same cluster after ours. "
             "Medians of the runs after a first one (cold: Ray starts the workers of the sources' tasks); cpu: "
             "the whole machine's busy CPU seconds during the run (all nodes share 2 cores).", "",
             "| nodes | link | model | link-time | ours | Ray broadcast | ours / Ray | ray-zerocopy 0.2.0 | "
             "ours, cold | cpu ours / Ray |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for f in x.get("runs", []):
        if "error" in f:
            lines.append(f"| {f['nodes']} | {f['rate']} | {size(f['mib'])} | not measured: `{why(f['error'])}` "
                         "| | | | | | |")
            continue
        o, rr = f["ours"], f["ray"]
        cold = o["runs"][0]["max_s"]
        cpu_o = statistics.median(run["cpu_s"] for run in o["runs"][1:] or o["runs"])
        cpu_r = statistics.median(run["cpu_s"] for run in rr["runs"][1:] or rr["runs"])
        pub = f.get("published")
        pub = t(pub["max_s_median"]) if pub else "-"
        lines.append(f"| {f['nodes']} | {f['rate']} | {size(f['mib'])} | {t(f['link_s'])} | "
                     f"{t(o['max_s_median'])} | {t(rr['max_s_median'])} | "
                     f"×{o['max_s_median'] / rr['max_s_median']:.2f} | {pub} | {t(cold)} | "
                     f"{cpu_o:.1f} s / {cpu_r:.1f} s |")
    m = x.get("model") or {}
    if not m:
        lines += ["", "No model: no fan-out was measured."]
    if m:
        lines += ["", "Model (bench/fanout_model.py), its parameters measured in these runs: a relay adds "
                  f"h = {m['h'] * 1000:.0f} ms to each chunk on its way (the first chunk's step from one depth of "
                  f"the chain to the next, less its time on the link), a pull's fixed cost t0 = {m['t0']:.2f} s, and "
                  f"a pull costs k = {m['k'] * 2**30:.1f} CPU-seconds per GiB here (Ray's transfer, the kernel's "
                  "networking, our checks and copies). Ours = max(t0 + S/B + (N − 2)(8 MiB/B + h), "
                  "t0 + (N − 1)·k·S / 2 cores), and past 16 relays in a chain (the directory's depth limit: a tree "
                  "of chains) t0 + 2S/B + 16(2·8 MiB/B + h); Ray = (N − 1)·S/B.", "",
                  "| nodes | link | model | measured ours | model | measured Ray | model |",
                  "|---|---|---|---|---|---|---|"]
        for c in x.get("check", []):
            lines.append(f"| {c['nodes']} | {c['gbit']:g} Gbit/s | {size(c['mib'])} | {t(c['ours_s'])} | "
                         f"{t(c['ours_model_s'])} | {t(c['ray_s'])} | {t(c['ray_model_s'])} |")
        pub = x.get("ray_published") or {}
        lines += ["", "Projected, 1 GiB, nodes with cores of their own (the links bind; h as measured here, "
                  "with the nodes sharing 2 cores: pessimistic):", "",
                  "| nodes | link | link-time | ours | Ray broadcast, all at once | CPU a pull costs a node |",
                  "|---|---|---|---|---|---|"]
        for p_ in x.get("projection", []):
            lines.append(f"| {p_['nodes']} | {p_['gbit']} Gbit/s | {t(p_['link_s'])} | {t(p_['ours_s'])} | "
                         f"{t(p_['ray_s'])} | {p_['cpu_per_node_s']:.1f} s |")
        if pub:
            lines += ["", f"For comparison: {pub['source']}."]
    lines.append("")
    return lines


HF_LOADERS = {"ours": "ours: `ray_zerocopy.from_pretrained(name)` (the skeleton the node's first process kept)",
              "ours-first": "ours, the node's first process (builds with transformers, keeps the skeleton)",
              "transformers": "`AutoModelForCausalLM.from_pretrained(DIR)`",
              "safetensors": "the class from the config, `load_file` of each shard, `load_state_dict`",
              "runai": "runai-model-streamer into a state dict, then transformers",
              "fastsafetensors": "fastsafetensors (CPU) into a state dict, then transformers"}


def hugging_face_lines(x):
    """Section 9 (bench_hf.py)."""
    if not x:
        return []
    if "error" in x:
        return ["## 9. A Hugging Face model in a fresh process", "", f"not measured: `{why(x['error'])}`", ""]
    m = x["model"]
    loaders = x["loaders"]
    base = loaders.get("transformers", {}).get("ready_s")
    lines = ["## 9. A Hugging Face model in a fresh process", "",
             f"A Llama-style causal LM from a config (hidden {m['hidden']}, {m['layers']} layers, random weights, "
             f"{m['dtype']}, {size(m['bytes'] / MiB)}), saved sharded with a tokenizer, preloaded once "
             f"({t(x['preload_s'])}). Each loader in a fresh process, the page cache warm, transformers' modeling "
             "code imported before the clock (its cost below, paid by every loader alike). Ready: the model "
             "returned in eval mode; first logits: ready plus one forward of 16 tokens. Medians.", "",
             "| loader | ready | first logits | ready / transformers |", "|---|---|---|---|"]
    for key, label in HF_LOADERS.items():
        v = loaders.get(key)
        if v is None:
            continue
        if "error" in v:
            lines.append(f"| {label} | does not run here: `{why(v['error'])}` | | |")
            continue
        ratio = f"×{v['ready_s'] / base:.3f}" if base else ""
        lines.append(f"| {label} | {t(v['ready_s'])} | {t(v['logits_s'])} | {ratio} |")
    imports = [v["import_s"] for v in loaders.values() if "import_s" in v]
    if imports:
        lines += ["", f"Importing `transformers.modeling_utils` and the Llama modeling module first costs "
                      f"{t(statistics.median(imports))} in a fresh process here (median over the loaders' "
                      "processes), before any of the times above."]
    p = x.get("pss")
    if p:
        lines += ["", f"{p['processes']} processes holding ours at once: their segment PSS sums to "
                      f"×{p['ratio']:.2f} the model's segment (one copy between them)."]
    lines.append("")
    return lines


def exported_lines(x):
    """Section 10 (bench_export.py)."""
    if not x:
        return []
    title = "## 10. A torch.export program in a fresh process"
    if "error" in x:
        return [title, "", f"not measured: `{why(x['error'])}`", ""]
    lines = [title, "",
             "bench_model's transformer-like model exported with `torch.export` and saved with `torch.export.save`, "
             "preloaded once. Each loader in a fresh process, torch and its export deserializer imported before the "
             "clock, the archive in the page cache, the loaders taking turns. Program: "
             "`ray_zerocopy.load_exported(name)` against `torch.export.load(path)`; ready: its `.module()` too (the "
             "same torch code for both), and for the AOTInductor package (compiled with its weights beside the "
             "library) `ray_zerocopy.load_aoti(name)` against torch's `load_pt2(path, load_weights_from_disk=True)`; "
             "first output: ready plus one forward of 16 tokens. Ours: what the node's first process (of a user) "
             "kept read; ours, first process: that process, which reads the program and keeps it. Medians.", "",
             "| model | program | ours program | torch program | ours / torch | ours ready | torch ready "
             "| ours / torch | ours, first process (ready) | ours first output | torch first output |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in x["models"].items():
        ours, theirs = m["loaders"].get("ours", {}), m["loaders"].get("torch", {})
        first = m["loaders"].get("ours-first", {})
        if "error" in ours or "error" in theirs:
            lines.append(f"| {label} | | `{why(ours.get('error') or theirs.get('error'))}` | | | | | | | | |")
            continue
        kind = "compiled" if m.get("aoti") else "exported"
        program = (f"{t(ours['program_s'])} | {t(theirs['program_s'])} | ×{ours['program_s'] / theirs['program_s']:.2f}"
                   if "program_s" in ours and "program_s" in theirs else "— | — | —")
        lines.append(f"| {label} ({size(m['bytes'] / MiB)}) | {kind}, {m['blocks']} blocks, {m['nodes']} nodes | "
                     f"{program} | {t(ours['ready_s'])} | {t(theirs['ready_s'])} | "
                     f"×{ours['ready_s'] / theirs['ready_s']:.2f} | "
                     f"{t(first['ready_s']) if 'ready_s' in first else ''} | {t(ours['output_s'])} | "
                     f"{t(theirs['output_s'])} |")
    for label, m in x["models"].items():
        if m.get("pss"):
            p = m["pss"]
            lines += ["", f"{p['processes']} processes holding ours ({label}) at once: their segment PSS sums to "
                          f"×{p['ratio']:.2f} the model's segment (one copy between them)."]
        if m["loaders"].get("mismatch"):
            lines += ["", f"{label}: {m['loaders']['mismatch']}"]
    lines.append("")
    return lines


def across_nodes_lines(x):
    """Section 7 (bench_cluster.py)."""
    if not x:
        return []
    if "error" in x:
        return ["## 7. Across nodes", "", f"not measured: `{why(x['error'])}`", ""]
    lines = ["## 7. Across nodes: a node that lacks the model", "",
             "Two Ray nodes on this machine, a zerocopyd each. Ours: `ActorWrapper.load()` in a warm actor on "
             "node B for a model published on node A (the pull through Ray, the digest check, the map). "
             "ray.get: the same actor fetches as many bytes put into node A's object store. Object store: the "
             "peak above its level before the run (ray.get: node B's copy).", "",
             "| model | ours | ray.get | throughput ours / ray.get | object store peak, ours | ray.get |",
             "|---|---|---|---|---|---|"]
    for mib, v in x["sizes"].items():
        ours, theirs = statistics.median(v["ours_s"]), statistics.median(v["ray_get_s"])
        lines.append(f"| {size(mib)} | {t(ours)} ({v['ours_gib_s']:.2f} GiB/s) | {t(theirs)} "
                     f"({v['ray_get_gib_s']:.2f} GiB/s) | ×{v['throughput_ratio']:.2f} | "
                     f"{v['ours_store_peak'] / MiB:,.0f} MiB | {v['ray_get_store_peak'] / MiB:,.0f} MiB |")
    lines.append("")
    return lines


def plots(r, out_dir):
    if r.get("gpu_only"):
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    sizes = [str(s) for s in r["sizes_mib"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    methods = {k for s in sizes for k in r["load"][s]}
    for k in sorted(methods):
        xs = [int(s) for s in sizes if r["load"][s].get(k)]
        ys = [r["load"][s][k]["median"] for s in sizes if r["load"][s].get(k)]
        ax.plot(xs, ys, marker="o", label=k)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([int(s) for s in sizes], [size(s) for s in sizes])
    ax.set_xlabel("model size")
    ax.set_ylabel("time until usable (s, log scale)")
    ax.set_title("Load time against model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "load_time.png", dpi=110)
    plt.close(fig)
    if "memory" in r:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method, per_n in r["memory"]["results"].items():
            ns = sorted(per_n, key=int)
            ax.plot([int(n) for n in ns], [(per_n[n]["pss"] + per_n[n].get("node_pss", 0)) / GiB for n in ns],
                    marker="o", label=method)
        ax.set_xlabel("actors holding the model")
        ax.set_ylabel("total PSS: actors + raylet + zerocopyd (GiB)")
        ax.set_title(f"Memory of N actors, {size(r['memory']['mib'])} model")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "memory.png", dpi=110)
        plt.close(fig)
    fan_out_plot(r.get("fan_out") or {}, out_dir)


def fan_out_plot(fan, out_dir):
    """fan_out.png: section 8's fan-outs, measured and modelled."""
    if fan.get("model"):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import fanout_model
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ns = list(range(2, 65))
        for gbit, style in ((1, "-"), (2, ":"), (10, "--")):
            shared = gbit <= 2  # the simulated cluster's rates: its nodes share 2 cores
            ax.plot(ns, [fanout_model.ours(fan["model"], n, 256 * MiB, gbit * 1e9, shared_cores=shared)
                         for n in ns], style, color="C0",
                    label=f"ours, {gbit} Gbit/s" + (", 2 shared cores" if shared else ", own cores"))
            ax.plot(ns, [fanout_model.ray(fan["model"], n, 256 * MiB, gbit * 1e9) for n in ns], style,
                    color="C1", label=f"Ray broadcast, {gbit} Gbit/s")
        for f in fan.get("runs", []):
            if "error" in f or f["mib"] != 256:
                continue
            ax.plot([f["nodes"]], [f["ours"]["max_s_median"]], "o", color="C0")
            ax.plot([f["nodes"]], [f["ray"]["max_s_median"]], "s", color="C1")
            ax.annotate(f["rate"], (f["nodes"], f["ours"]["max_s_median"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds until every node holds 256 MiB (log)")
        ax.set_title("256 MiB to every node: measured (points: ours o, Ray s) and modelled (lines)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / "fan_out.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    d = Path(sys.argv[1])
    res = json.loads((d / "results.json").read_text())
    (d / "results.md").write_text(markdown(res))
    plots(res, d)
    print(markdown(res))
