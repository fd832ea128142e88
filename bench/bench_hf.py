"""Section 9 of `make bench`: a Hugging Face model ready in a fresh process.

A Llama-style causal LM made from a config (random weights, bf16), saved
by save_pretrained in shards with a tokenizer, preloaded once. Each
loader then runs in a fresh process, `import transformers.modeling_utils`
and the model's modeling module done before the clock (every loader pays
that import alike; its cost is reported apart; ours imports ray_zerocopy
before it too), the page cache warm (a first run of each is not counted):

  ours            ray_zerocopy.from_pretrained(name), the skeleton the
                  node's first process kept unpickled (ray_zerocopy/_cache.py)
  ours-first      the same in the node's first process (of this user): it
                  builds the model with transformers and keeps the skeleton
  transformers    AutoModelForCausalLM.from_pretrained(DIR)
  safetensors     the class built from the config, then load_file of every
                  shard and load_state_dict
  runai           runai-model-streamer's SafetensorsStreamer into a state
                  dict, given to transformers' from_pretrained
  fastsafetensors fastsafetensors' SafeTensorsFileLoader (CPU), the same

Each: seconds until the model is ready, and until its first logits (one
forward of 16 tokens). Then 4 processes of ours hold the model at once:
their summed PSS of its segment against its size. One JSON line on stdout.

    bench_hf.py [--build DIR] [--repeats N] [--hidden H --layers L]
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

LOADERS = ["ours", "ours-first", "transformers", "safetensors", "runai", "fastsafetensors"]

# Run in a fresh process: argv = loader, directory, name. Prints one JSON line.
CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import torch, transformers, transformers.modeling_utils
    import transformers.models.llama.modeling_llama
    imported = time.perf_counter() - t0
    loader, d, name = sys.argv[1:4]
    if loader.startswith("ours"):  # its imports before the clock too, as transformers'
        import ray_zerocopy, ray_zerocopy._hf
    if loader == "ours-first":  # the node's first process of this user: nothing kept yet
        import os, tempfile
        os.environ["ZEROCOPY_SKELETON_CACHE"] = tempfile.mkdtemp(  # in the bench's work directory
            dir=os.path.dirname(os.environ["ZEROCOPY_SKELETON_CACHE"]), prefix="skeletons-")
    config = transformers.AutoConfig.from_pretrained(d) if not loader.startswith("ours") else None

    def shards():
        import glob
        return sorted(glob.glob(d + "/*.safetensors"))

    start = time.perf_counter()
    if loader.startswith("ours"):
        model = ray_zerocopy.from_pretrained(name)
    elif loader == "transformers":
        model = transformers.AutoModelForCausalLM.from_pretrained(d)
    elif loader == "safetensors":
        from safetensors.torch import load_file
        model = transformers.LlamaForCausalLM(config).to(config.dtype)
        state = {}
        for f in shards():
            state.update(load_file(f))
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    elif loader == "runai":
        from runai_model_streamer import SafetensorsStreamer
        state = {}
        with SafetensorsStreamer() as streamer:
            streamer.stream_files(shards())
            for key, tensor in streamer.get_tensors():
                state[key] = tensor.clone()
        model = transformers.LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state)
    elif loader == "fastsafetensors":
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup
        fl = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True)
        fl.add_filenames({0: shards()})
        fb = fl.copy_files_to_device()
        state = {k: fb.get_tensor(k).clone() for k in fl.get_keys()}
        fb.close()
        fl.close()
        model = transformers.LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state)
    model.eval()
    ready = time.perf_counter() - start
    with torch.no_grad():
        model(torch.arange(16).unsqueeze(0))
    logits = time.perf_counter() - start
    print(json.dumps({"import_s": imported, "ready_s": ready, "logits_s": logits}), flush=True)
    if len(sys.argv) > 4:  # hold it for the PSS reading
        sys.stdin.readline()
""")


def make_model(d: Path, hidden: int, layers: int) -> int:
    """Saves the model and a tokenizer in `d`; returns its bytes."""
    import torch
    import transformers
    from test_hf import bpe_tokenizer
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                   num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                   num_key_value_heads=hidden // 256, max_position_embeddings=4096,
                                   tie_word_embeddings=False, dtype="bfloat16")
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(cfg)
    # Random weights without the init's cost: normal(0, 0.02), bf16.
    state = {k: (torch.randn(v.shape) * 0.02).to(torch.bfloat16) for k, v in meta.state_dict().items()
             if "rotary" not in k}
    model = transformers.LlamaForCausalLM.from_pretrained(None, config=cfg, state_dict=state)
    model.save_pretrained(d, max_shard_size="100MB")
    bpe_tokenizer(d)
    return sum(t.numel() * t.element_size() for t in state.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    build = Path(args.build)
    sys.path.insert(0, str(build / "python"))
    sys.path.insert(0, str(HERE))
    from fresh_process import medians, scratch_daemon, spawn
    from test_ray import segment_pss

    with scratch_daemon(build, "zc-bench-hf-") as (daemon, work, env):
        d = work / "llama"
        nbytes = make_model(d, args.hidden, args.layers)
        name = "bench-hf"
        t0 = time.perf_counter()
        daemon.run("preload", str(d), "--name", name)
        preload_s = time.perf_counter() - t0
        results = medians(CHILD, {loader: [loader, d, name] for loader in LOADERS}, env, args.repeats,
                          ("import_s", "ready_s", "logits_s"), "bench_hf")
        # Four processes of ours at once: one copy between them.
        digest = daemon.run("inspect", name)["model"]["digest"]
        procs = [spawn(CHILD, ["ours", d, name], env, hold=True) for _ in range(4)]
        try:
            for p in procs:
                p.stdout.readline()
            pss = [segment_pss(p.pid, digest)[1] for p in procs]
        finally:
            for p in procs:
                p.stdin.close()
                p.wait(timeout=120)
        size = int(daemon.run("inspect", name)["model"]["size"])  # protobuf JSON: a string
        print(json.dumps({"model": {"hidden": args.hidden, "layers": args.layers, "bytes": nbytes, "dtype": "bf16",
                                    "segment_bytes": size},
                          "preload_s": preload_s, "loaders": results,
                          "pss": {"processes": 4, "sum_bytes": sum(pss), "ratio": sum(pss) / size}}))


if __name__ == "__main__":
    main()
