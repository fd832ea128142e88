"""Writes a demo model as one safetensors file: a stack of Linear layers.

    make_demo_model.py OUT.safetensors [--mib 1024] [--seed 0]

The weights are seeded random fp32, so two runs give the same bytes (and so
the same digest). Run it with the project venv's interpreter.
"""
import argparse
import math

import torch
from safetensors.torch import save_file


def build(mib: int, seed: int) -> dict:
    torch.manual_seed(seed)
    width = 4096  # one 4096x4096 fp32 layer is 64 MiB
    layer_bytes = width * width * 4 + width * 4
    layers = max(1, math.floor(mib * 2**20 / layer_bytes))
    tensors = {}
    for i in range(layers):
        tensors[f"layers.{i}.weight"] = torch.randn(width, width) / math.sqrt(width)
        tensors[f"layers.{i}.bias"] = torch.zeros(width)
    rest = mib * 2**20 - layers * layer_bytes
    if rest >= 4 * width:  # fill up to the requested size with a final head
        tensors["head.weight"] = torch.randn(rest // (4 * width), width) / math.sqrt(width)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--mib", type=int, default=1024, help="model size in MiB (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tensors = build(args.mib, args.seed)
    save_file(tensors, args.out, metadata={"generator": "zerocopy bench/make_demo_model.py"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {args.out}: {len(tensors)} tensors, {total / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
