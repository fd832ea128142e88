"""Writes the seed corpus (tests/fuzz/corpus/*) from small real files:
safetensors headers, shard indexes, torch.save archives. Run with the
project venv's python; the results are committed."""
import collections
import io
import json
from pathlib import Path

import torch
from safetensors.torch import save

here = Path(__file__).parent / "corpus"
torch.manual_seed(0)


def put(kind, name, data: bytes):
    (here / kind).mkdir(parents=True, exist_ok=True)
    (here / kind / name).write_bytes(data)


put("safetensors", "small", save({"a": torch.randn(2, 3), "b": torch.arange(4, dtype=torch.int64)}))
put("safetensors", "dtypes", save({"f16": torch.ones(2, dtype=torch.float16), "bf16": torch.ones(1, dtype=torch.bfloat16),
                                    "bool": torch.tensor([True, False]), "u8": torch.arange(3, dtype=torch.uint8)},
                                   metadata={"format": "pt", "note": "seed"}))
put("safetensors", "empty_tensor", save({"e": torch.empty(0, 4), "s": torch.tensor(1.5)}))

put("shard_index", "hf", json.dumps({"metadata": {"total_size": 1234},
                                     "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                                    "b.bias": "model-00002-of-00002.safetensors"}}).encode())
put("shard_index", "minimal", b'{"weight_map": {"x": "x.safetensors"}}')

def tsave(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()

base = torch.randn(3, 4)
put("torch_save", "state_dict", tsave(torch.nn.Linear(3, 2).state_dict()))
put("torch_save", "nested", tsave({"model": {"w": base, "w_tied": base, "w_t": base.t(), "row": base[1]},
                                   "epoch": 3, "cfg": {"lr": 0.1, "layers": [1, 2]}, "none": None,
                                   "opt": {0: {"step": torch.tensor(5.0)}}}))
put("torch_save", "dtypes", tsave(collections.OrderedDict(
    (str(d), torch.zeros(2, dtype=d)) for d in (torch.float64, torch.float16, torch.bfloat16, torch.int8,
                                                torch.bool, torch.complex64))))
put("torch_save", "parameters", tsave(dict(torch.nn.Linear(2, 2).named_parameters())))
put("torch_save", "untyped_v3", tsave({"u16": torch.tensor([1, 2]).to(torch.uint16),
                                       "f8": torch.zeros(3).to(torch.float8_e4m3fn)}))
