"""Section 10 of `make bench`: a torch.export program ready in a fresh process.

bench_model's transformer-like model, exported with torch.export and
saved with torch.export.save, preloaded once: 4 blocks wide enough for
256 MiB and for 1 GiB of weights (the same program, 4x the bytes), and
bench_model's own 256 MiB model (5 narrower blocks: another program). Each loader
then runs in a fresh process, torch and its export deserializer imported
before the clock (both loaders use them; ours imports ray_zerocopy before
it too), the archive in the page cache (a first run of each is not
counted):

  ours        ray_zerocopy.load_exported(name).module(), the program read
              by the node's first process kept (ray_zerocopy/_export.py)
  ours-first  the same in the node's first process (of this user): it
              reads the program and keeps it
  torch       torch.export.load(path).module()

And the first of them compiled by AOTInductor (its weights beside the
library), ours `ray_zerocopy.load_aoti(name)` against torch's
`load_pt2(path, load_weights_from_disk=True)` (what
`torch._inductor.aoti_load_package` does for such a package).

Each: seconds until the program is loaded (`load_exported` against
`torch.export.load`), until the module is
ready (`.module()` too; an AOTInductor package's loader returns it), and
until its first output (one forward of 16 tokens). The loaders take turns,
one process each per round, so that a slow stretch of the machine falls
on all of them. Then, at the largest, 4 processes of ours hold
the module at once: their summed PSS of its segment against its size. One
JSON line on stdout.

    bench_export.py [--build DIR] [--repeats N] [--quick]
"""
import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests/python"))

LOADERS = ["ours", "ours-first", "torch"]

# Run in a fresh process: argv = loader, archive, name. Prints one JSON line.
CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import torch, torch.export, torch._export.serde.serialize
    import torch.fx.experimental.validator  # what both loaders' first ShapeEnv imports
    torch.set_num_threads(2)
    imported = time.perf_counter() - t0
    loader, path, name = sys.argv[1:4]
    aoti = name.endswith("-aoti")
    if loader.startswith("ours"):  # its imports before the clock too, as torch's
        import ray_zerocopy, ray_zerocopy._export
    if loader == "ours-first":  # the node's first process of this user: nothing kept yet
        import os, tempfile
        for variable in ("ZEROCOPY_SKELETON_CACHE", "ZEROCOPY_AOTI_CACHE"):  # in the bench's work directory
            os.environ[variable] = tempfile.mkdtemp(dir=os.path.dirname(os.environ[variable]), prefix="first-")
    if aoti:
        from torch.export.pt2_archive._package import load_pt2
    start = time.perf_counter()
    times = {}
    if aoti:
        module = ray_zerocopy.load_aoti(name) if loader.startswith("ours") else \
            load_pt2(path, load_weights_from_disk=True).aoti_runners["model"]
    else:
        program = ray_zerocopy.load_exported(name) if loader.startswith("ours") else torch.export.load(path)
        times["program_s"] = time.perf_counter() - start
        module = program.module()
    times["ready_s"] = time.perf_counter() - start
    with torch.no_grad():
        out = module(torch.arange(16).reshape(1, 16))
    times["output_s"] = time.perf_counter() - start
    print(json.dumps({"import_s": imported, **times, "output_sum": float(out.sum())}), flush=True)
    if len(sys.argv) > 4:  # hold it for the PSS reading
        for p in (module._zerocopy_constants.values() if aoti else module.parameters()):
            p.sum()  # every page touched
        print("held", flush=True)
        sys.stdin.readline()
""")


def wide(mib: int, layers: int) -> int:
    """The hidden size (a multiple of 64) that gives `layers` of
    bench_model's blocks about `mib` MiB of fp32 weights."""
    import bench_model
    hidden = 64
    while 4 * (layers * (12 * (hidden + 64) ** 2 + 13 * (hidden + 64)) + bench_model.VOCAB * (hidden + 64)) \
            <= mib << 20:
        hidden += 64
    return hidden


def export(mib: int, layers: int | None, path: Path, aoti: bool) -> dict:
    """Saves the model, exported (and with `aoti` compiled by AOTInductor,
    its weights beside the library); returns what it is."""
    import torch
    import bench_model
    if layers is None:
        model = bench_model.build(mib)
    else:
        model = bench_model.initialized(bench_model.TransformerLike(wide(mib, layers), layers)).eval()
    blocks = len(model.blocks)
    with torch.no_grad():  # what the loaders' first outputs must sum to
        output_sum = float(model(torch.arange(16).reshape(1, 16)).sum())
    ep = torch.export.export(model, (bench_model.example_input(),))
    if aoti:
        t0 = time.perf_counter()
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs={
            "aot_inductor.package_constants_in_so": False,
            "aot_inductor.package_constants_on_disk_format": "pickle_weights"})
        print(f"bench_export: compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    else:
        torch.export.save(ep, path)
    return {"bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()), "blocks": blocks,
            "nodes": len(ep.graph.nodes), "output_sum": output_sum}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the two 256 MiB models only")
    args = ap.parse_args()
    # (label, MiB, blocks: None for bench_model's own depth, AOTInductor)
    configs = [("256 MiB, 4 blocks", 256, 4, False), ("1 GiB, 4 blocks", 1024, 4, False),
               ("256 MiB, 5 blocks", 256, None, False), ("256 MiB, 4 blocks, AOTInductor", 256, 4, True)]
    if args.quick:
        configs = [configs[0], configs[2]]
    build = Path(args.build)
    sys.path.insert(0, str(build / "python"))
    sys.path.insert(0, str(HERE))
    from fresh_process import medians, scratch_daemon, spawn
    from test_ray import segment_pss

    out = {"models": {}}
    with scratch_daemon(build, "zc-bench-export-") as (daemon, work, env):
        for i, (label, mib, layers, aoti) in enumerate(configs):
            path, name = work / f"model-{i}.pt2", f"bench-export-{i}" + ("-aoti" if aoti else "")
            model = export(mib, layers, path, aoti)
            t0 = time.perf_counter()
            daemon.run("preload", str(path), "--name", name)
            preload_s = time.perf_counter() - t0
            keys = ("import_s", "ready_s", "output_s") + (() if aoti else ("program_s",))
            results = medians(CHILD, {loader: [loader, path, name] for loader in LOADERS}, env, args.repeats, keys,
                              f"bench_export: {label}")
            for result in results.values():
                if "runs" in result:
                    result["output_sum"] = result["runs"][0]["output_sum"]
            sums, want = [r.get("output_sum") for r in results.values()], model["output_sum"]
            if any(x != x for x in sums if x is not None):  # NaN: equal or not, nothing to compare
                results["mismatch"] = "the model's output is NaN (the loaders' outputs cannot be compared)"
            elif len(set(sums)) != 1:
                results["mismatch"] = "the loaders' outputs differ"
            elif sums[0] is not None and abs(sums[0] - want) > 1e-3 * max(1.0, abs(want)):  # compiled: rounding
                results["mismatch"] = (f"the loaders agree, but not with the model run before it was exported "
                                       f"({sums[0]} against {want})")
            entry = dict(model, file_bytes=path.stat().st_size, preload_s=preload_s, loaders=results, aoti=aoti)
            if mib == max(c[1] for c in configs) and not aoti:  # four processes of ours at once: one copy between them
                digest = daemon.run("inspect", name)["model"]["digest"]
                size = int(daemon.run("inspect", name)["model"]["size"])  # protobuf JSON: a string
                procs = [spawn(CHILD, ["ours", path, name], env, hold=True) for _ in range(4)]
                try:
                    for p in procs:
                        while p.stdout.readline().strip() not in ("held", ""):
                            pass
                    pss = [segment_pss(p.pid, digest)[1] for p in procs]
                finally:
                    for p in procs:
                        p.stdin.close()
                        p.wait(timeout=120)
                entry["pss"] = {"processes": 4, "sum_bytes": sum(pss), "ratio": sum(pss) / size}
            out["models"][label] = entry
            path.unlink()
        print(json.dumps(out))


if __name__ == "__main__":
    main()
