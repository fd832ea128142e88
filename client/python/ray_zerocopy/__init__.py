"""ray_zerocopy: share model weights between the processes of a node.

Models are published to the node's zerocopyd daemon once and mapped
copy-on-write by every process that loads them; see the project README.
"""
from . import errors
from .errors import (AlreadyExistsError, CorruptModelError, DaemonUnavailableError, FailedPreconditionError,
                     GpuSharingUnavailableError, InvalidModelError, ModelNotFoundError, OutOfSpaceError,
                     PermissionDeniedError, ZeroCopyError, ZerocopyError)

# The wrappers import torch: loaded on first use, so that a process that
# only moves bytes (the cluster pull's tasks on a source node, a Ray worker
# started for them) does not pay torch's import.
_LAZY = {"ModelWrapper": "model_wrappers", "JITModelWrapper": "model_wrappers", "ActorWrapper": "wrappers",
         "JITActorWrapper": "wrappers", "JITTaskWrapper": "wrappers", "TaskWrapper": "wrappers",
         # Hugging Face models (transformers imported when called)
         "from_pretrained": "_hf", "tokenizer": "_hf", "preload_pretrained": "_hf",
         # torch.export programs
         "load_exported": "_export", "preload_exported": "_export", "load_aoti": "_export"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ray_zerocopy' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))

__version__ = "0.1.0"


def connect(socket: str | None = None):
    """Uses zerocopyd at `socket` in this process from now on (default:
    $ZEROCOPY_SOCKET, then the daemon's default) and checks that it answers.
    Returns the daemon's stats."""
    import os
    from . import _native
    if socket:
        os.environ["ZEROCOPY_SOCKET"] = socket  # child processes and Ray workers started later inherit it
    return _native.client(socket).stats()


def load_state_dict(name_or_digest: str, device=None) -> dict:
    """The model's tensors by name, zero-copy views of its mapping (tied
    tensors share one storage). Works for every model in the store. A CUDA
    `device`: views of the GPU's one shared copy (shared and writable)."""
    from ._store import load_state_dict as load
    return load(name_or_digest, device=device)


def stats() -> dict:
    """zerocopyd's figures: bytes used and budget, models, sessions, ...;
    "pulled": the models this node's daemon got from other nodes of a Ray
    cluster (digest, names, bytes, source node, seconds the transfer took);
    "recent_pulls": this process's pulls (the last 16), each with the sources it dropped
    and why (a relay that died, stalled, or served altered bytes)."""
    from . import _cluster, _native
    client = _native.client()
    figures = client.stats()
    figures["pulled"] = _cluster.pulled(client.list())
    figures["recent_pulls"] = _cluster.recent_pulls()
    return figures


__all__ = ["ActorWrapper", "JITActorWrapper", "JITModelWrapper", "JITTaskWrapper", "ModelWrapper", "TaskWrapper",
           "connect", "load_state_dict", "stats", "from_pretrained", "tokenizer", "preload_pretrained",
           "load_exported", "preload_exported", "load_aoti", "errors", "ZeroCopyError", "DaemonUnavailableError",
           "ModelNotFoundError", "InvalidModelError", "OutOfSpaceError", "PermissionDeniedError",
           "CorruptModelError", "GpuSharingUnavailableError", "AlreadyExistsError", "FailedPreconditionError",
           "ZerocopyError"]
