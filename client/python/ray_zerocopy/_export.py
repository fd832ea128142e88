"""torch.export programs: an ExportedProgram preloaded once per node, the
program with every weight and constant mapped zero-copy in every process.

A ``torch.export.save`` archive (.pt2) is preloaded as one model
(formats/pt2_archive.h): its weights and tensor constants become the
model's tensors (tied weights stay one storage), and the rest of the
archive (the program's JSON, the weights' and constants' configs, the
sample inputs) is kept with the model as files, covered by its digest and
pulled with it to other nodes. Preloading parses the archive's JSON only;
nothing in it runs.

``load_exported`` rebuilds the ExportedProgram with torch's own
deserializer from the stored program and configs, handing it the mapped
tensors as its state dict and constants, so ``ep.module()``'s parameters,
buffers and constants are views of the one shared copy.
"""
from __future__ import annotations

import io
import json
import os
import tempfile

import torch

from . import _cluster, _native, _store
from .errors import InvalidModelError

FORMAT = "torch-export"


def preload_exported(program, name: str = "", pin: bool = False, socket: str | None = None) -> dict:
    """Preloads an ExportedProgram into this node's zerocopyd as model
    `name`: `program` is a ``torch.export.save`` archive's path, or an
    ExportedProgram (saved to a temporary archive first). Inside a Ray
    cluster the model is registered in the cluster's directory, so other
    nodes pull it on first use. Returns the model's info (digest, size,
    ...). Same as ``zerocopy preload m.pt2 --name NAME``."""
    if isinstance(program, torch.export.ExportedProgram):
        with tempfile.TemporaryDirectory(prefix="zerocopy-export-") as d:
            path = os.path.join(d, "program.pt2")
            torch.export.save(program, path)
            info = _native.client(socket).preload(path, FORMAT, name, pin)
    else:
        info = _native.client(socket).preload(os.fspath(program), FORMAT, name, pin)
    _cluster.register(info["digest"], name, socket)
    return info


def _program_name(files: dict, ref: str) -> str:
    programs = [n[len("models/"):-len(".json")] for n in files if n.startswith("models/") and n.endswith(".json")]
    if len(programs) != 1:
        raise InvalidModelError(f"model {ref!r} keeps {len(programs)} programs; a torch.export archive has one",
                                "INVALID_ARGUMENT")
    return programs[0]


def _payload_config(files: dict, path: str):
    from torch._export.serde import schema
    from torch._export.serde.serialize import _dict_to_dataclass
    if path not in files:
        return {}
    return _dict_to_dataclass(schema.PayloadConfig, json.loads(files[path])).config


def _device_of(configs) -> torch.device | None:
    """The device the archive's tensors were saved on (torch.export.load
    puts them there): None for the host."""
    for config in configs:
        for payload in config.values():
            meta = payload.tensor_meta
            if meta is not None and meta.device.type != "cpu":
                return torch.device(meta.device.type, meta.device.index)
    return None


def _sample_inputs(blob: bytes | None):
    """The archive's sample inputs, read as plain tensors only (torch's own
    loader falls back to running the pickle's code: never here); None
    where they are not plain data."""
    if not blob:
        return None
    try:
        return torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:
        return None


def load_exported(ref: str, device=None, socket: str | None = None):
    """The ExportedProgram stored as `ref` (a name or digest, preloaded from
    a ``torch.export.save`` archive), rebuilt by torch's deserializer with
    every weight, buffer and tensor constant a view of the node's one
    shared copy: ``load_exported(ref).module()`` runs as
    ``torch.export.load(path).module()`` does, holding no copy of its own.
    Parameters have ``requires_grad=False`` (inference); a write to a
    weight copies the pages it touches into this process (the mapping is
    copy-on-write), never into the shared copy.

    `device`: where the tensors live: None (default) for where the archive
    says they were saved (as torch.export.load does), "cpu", or "cuda:N"
    for views of that GPU's one shared copy. Sample inputs are kept where
    they are plain tensors (torch.load with weights_only=True), left out
    otherwise: nothing from the archive runs. Inside Ray, a model this node
    lacks is pulled from another node first.

    The program decides what runs in this process: loaded by name, it must
    come from a publisher this process trusts, as a pickled skeleton or a
    TorchScript archive must (SECURITY.md; by digest it always loads).

    Raises ModelNotFoundError, PermissionDeniedError (an untrusted
    publisher), or InvalidModelError for a model that is not a torch.export
    program or that this torch cannot read (the program's schema version,
    an operator it lacks)."""
    host = _store._map(ref, socket)
    _store.check_publisher(ref, host.info, "torch.export program")
    if host.format != FORMAT:
        raise InvalidModelError(f"model {ref!r} is {host.format!r}, not a torch.export program ({FORMAT!r}); "
                                "preload a torch.export.save archive", "INVALID_ARGUMENT")
    files = host.files()
    name = _program_name(files, ref)
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
    weights = _payload_config(files, f"data/weights/{name}_weights_config.json")
    constants = _payload_config(files, f"data/constants/{name}_constants_config.json")
    target = _store.gpu_device(device) if device is not None else _device_of((weights, constants))
    mapping = host if target is None else _store._map(host.digest, socket, device=target)
    with _store._no_gc():
        tensors = _store._state_dict(mapping)
    state_dict = {}
    for fqn, payload in weights.items():
        t = tensors[fqn]
        state_dict[fqn] = torch.nn.Parameter(t, requires_grad=False) if payload.is_param else t
    consts = {fqn: tensors[fqn] for fqn in constants}
    try:
        program = _bytes_to_dataclass(schema.ExportedProgram, files[f"models/{name}.json"])
        ep = ExportedProgramDeserializer().deserialize(program, state_dict, consts,
                                                       _sample_inputs(files.get(f"data/sample_inputs/{name}.pt")))
    except Exception as e:  # SerializeError, an operator this torch lacks, a schema it cannot read
        raise InvalidModelError(f"model {ref!r}: this torch ({torch.__version__}) cannot read its program: "
                                f"{type(e).__name__}: {e}", "INVALID_ARGUMENT") from None
    return ep
