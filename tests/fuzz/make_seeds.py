"""Writes the seed corpus (tests/fuzz/corpus/*) from small real files:
safetensors headers, shard indexes, torch.save archives. Run with the
project venv's python; the results are committed."""
import collections
import io
import json
import pickle
import struct
from pathlib import Path

import torch
from safetensors.torch import save

here = Path(__file__).parent / "corpus"
torch.manual_seed(0)


def put(kind, name, data: bytes):
    (here / kind).mkdir(parents=True, exist_ok=True)
    (here / kind / name).write_bytes(data)


put("safetensors", "small", save({"a": torch.randn(2, 3), "b": torch.arange(4, dtype=torch.int64)}))
put("safetensors", "dtypes", save({"f16": torch.ones(2, dtype=torch.float16),
                                   "bf16": torch.ones(1, dtype=torch.bfloat16),
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
put("torch_save", "bare_tensor", tsave(torch.arange(6.0).view(2, 3)))  # as AOTInductor packages keep weights
put("torch_save", "untyped_v3", tsave({"u16": torch.tensor([1, 2]).to(torch.uint16),
                                       "f8": torch.zeros(3).to(torch.float8_e4m3fn)}))


# The legacy (pre-zip) torch.save format: torch < 1.6, or
# _use_new_zipfile_serialization=False. Its storage keys are addresses, so
# these bytes change from run to run; what they hold does not.
def tsave_legacy(obj, protocol=2):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    return buf.getvalue()


legacy_base = torch.arange(12, dtype=torch.float32).view(3, 4)
put("torch_save", "legacy_state_dict", tsave_legacy(torch.nn.Linear(3, 2).state_dict()))
put("torch_save", "legacy_nested", tsave_legacy({
    "model": {"w": legacy_base, "w_tied": legacy_base, "w_t": legacy_base.t(), "row": legacy_base[1]},
    "epoch": 3, "cfg": {"lr": 0.1, "layers": [1, 2]}, "none": None, "opt": {0: {"step": torch.tensor(5.0)}}}))
put("torch_save", "legacy_dtypes", tsave_legacy(collections.OrderedDict(
    (str(d), torch.ones(2, dtype=d)) for d in (torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8,
                                               torch.bool, torch.complex64))))
put("torch_save", "legacy_protocol4", tsave_legacy({"w": torch.arange(6.0).view(2, 3), "e": torch.empty(0)}, 4))


def legacy_views():
    """A legacy file as torch < 1.0 could write it: a storage view, ('view',
    2, 4), of elements 2..5 of storage 'root' (8 floats 0..7); tensor 'part'
    is elements 3..5 (offset 1 in the view), 'whole' the root as 2x4.
    torch.load reads it to the same values."""
    class Ref:
        def __init__(self, pid):
            self.pid = pid

    class Tensor:
        def __init__(self, ref, offset, size, stride):
            self.args = (ref, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, Ref) else None

    root = Ref(("storage", torch.FloatStorage, "root", "cpu", 8, None))
    view = Ref(("storage", torch.FloatStorage, "root", "cpu", 8, ("view", 2, 4)))
    buf = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(head, buf, protocol=2)
    Pickler(buf, protocol=2).dump({"whole": Tensor(root, 0, (2, 4), (4, 1)), "part": Tensor(view, 1, (3,), (1,)),
                                   "part_again": Tensor(view, 0, (4,), (1,))})
    pickle.dump(["root"], buf, protocol=2)
    buf.write(struct.pack("<q8f", 8, *range(8)))
    return buf.getvalue()


put("torch_save", "legacy_views", legacy_views())


# torch.export.save archives (.pt2): weights, buffers, a tensor constant,
# tied weights (one record, two names), several dtypes.
class _Exported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.emb = torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.ones(3, dtype=torch.float16))
        self.register_buffer("steps", torch.arange(2, dtype=torch.int64))
        self.const = torch.arange(3.0)  # a tensor constant

    def forward(self, ids):
        h = self.emb(ids)
        return self.fc(h) * self.scale.float() + self.const, self.head(h), self.steps + 1


def export_bytes(module, args):
    buf = io.BytesIO()
    torch.export.save(torch.export.export(module, args), buf)
    return buf.getvalue()


put("pt2", "exported", export_bytes(_Exported().eval(), (torch.tensor([[1, 2]]),)))
put("pt2", "linear", export_bytes(torch.nn.Linear(2, 2).to(torch.bfloat16), (torch.ones(1, 2, dtype=torch.bfloat16),)))


def aoti_bytes():
    """An AOTInductor package as aoti_compile_and_package lays it out with
    its weights beside the library (a stand-in for the library: the reader
    keeps it as a file and never reads it): weight records are torch.save
    files of one tensor each, two names sharing one of them."""
    import zipfile
    buf = io.BytesIO()
    w = torch.arange(6.0).view(2, 3)
    config = {"fc.weight": ["weight_0", [2, 3], [3, 1], 0], "tied.weight": ["weight_0", [3], [1], 3],
              "fc.bias": ["weight_1", [2], [1], 0]}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in [("archive_format", b"pt2"), ("archive_version", b"0"), ("byteorder", b"little"),
                           ("data/aotinductor/model/m.wrapper.so", b"\x7fELF stand-in"),
                           ("data/aotinductor/model/m.wrapper_metadata.json", b'{"AOTI_DEVICE_KEY": "cpu"}'),
                           ("data/aotinductor/model/weights_config.json", json.dumps(config).encode()),
                           ("data/weights/weight_0", tsave(w)), ("data/weights/weight_1", tsave(torch.ones(2)))]:
            z.writestr(f"aoti/{name}", data)
    return buf.getvalue()


put("pt2", "aoti", aoti_bytes())
