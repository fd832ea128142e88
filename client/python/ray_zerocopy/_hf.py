"""Hugging Face models: a model directory preloaded once per node, a ready
transformers model in every process from the one shared copy.

A model directory (written by ``save_pretrained``, or a snapshot in the
Hugging Face cache, whose files link into its ``blobs/``) is preloaded as
one model: its weight shards become the model's tensors and the small
files beside them (``config.json``, ``generation_config.json``, tokenizer
and processor files: formats/checkpoint.h, AddDirectoryFiles) are kept
with it in the same segment, covered by its digest, and pulled with it to
other nodes of a Ray cluster.

``from_pretrained`` builds the model with transformers' own
``from_pretrained``, given the stored config and the mapped tensors as its
state dict: transformers makes the model on the meta device, ties the
weights it ties, computes the buffers the checkpoint lacks (rotary
``inv_freq``) and takes every checkpoint tensor as it is, so the
parameters are views of the mapping, not copies. That build takes
transformers' set-up (~0.1 s and more); so the first process of a user on
a node keeps what it built as a skeleton (the model pickled with every
mapped tensor a reference: _cache.py), and the next ones unpickle it over
their own mapping in milliseconds. transformers, huggingface_hub and
tokenizers are imported only here, when these functions are called.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from . import _cache, _cluster, _native, _store
from .errors import InvalidModelError, ModelNotFoundError, ZeroCopyError

# Hub files that are never weights we read: left out of a download.
_NOT_DOWNLOADED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.gguf",
                   "*.tflite", "*.ot", "*.npz", "onnx/*", "original/*", "openvino/*", "coreml/*"]


def hub_name(repo_id: str) -> str:
    """The store name of a Hub repository id: 'org/name' -> 'org--name'
    (as the Hugging Face cache spells it; a store name has no '/')."""
    return repo_id.replace("/", "--")


def _ref(ref: str) -> str:
    return hub_name(ref) if "/" in ref else ref


def preload_pretrained(source: str, name: str | None = None, pin: bool = False, revision: str | None = None,
                       socket: str | None = None) -> dict:
    """Preloads a Hugging Face model into this node's zerocopyd: `source` is
    a model directory (``save_pretrained``'s, or a cache snapshot) or a Hub
    repository id ('org/name'), found in the Hugging Face cache or, where
    this machine reaches the Hub, downloaded (safetensors weights only).
    Its weights and small files become one model, named `name` (for a
    repository id, by default the id with '/' as '--': 'org--name', which
    from_pretrained('org/name') finds). Inside a Ray cluster the model is
    registered in the cluster's directory, so other nodes pull it on first
    use. Returns the model's info (digest, size, ...). Same as
    ``zerocopy preload DIR --name NAME``."""
    if os.path.isdir(source):
        path = source
    else:
        path = _snapshot(source, revision)
        if name is None:
            name = hub_name(source)
    info = _native.client(socket).preload(path, "auto", name or "", pin)
    _cluster.register(info["digest"], name or "", socket)
    return info


def _snapshot(repo_id: str, revision: str | None) -> str:
    """The local directory of a Hub repository: from the cache, else
    downloaded."""
    try:
        import huggingface_hub
    except ImportError as e:
        raise ZeroCopyError(f"{repo_id!r} is not a directory, and finding a Hub repository needs huggingface_hub "
                            f"(pip install huggingface_hub): {e}", "FAILED_PRECONDITION") from None
    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=True,
                                                 ignore_patterns=_NOT_DOWNLOADED)
    except Exception:  # not in the cache: fetched, where the Hub is reachable
        pass
    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, ignore_patterns=_NOT_DOWNLOADED)
    except Exception as e:
        raise ModelNotFoundError(f"{repo_id!r} is not a directory, and as a Hub repository it is neither in the "
                                 f"Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) nor downloadable "
                                 f"here: {type(e).__name__}: {e}", "NOT_FOUND") from None


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ZeroCopyError(f"this needs transformers (pip install transformers): {e}", "FAILED_PRECONDITION") from None
    return transformers


@contextlib.contextmanager
def _files_on_disk(files: dict, ref: str):
    """The model's files written to a private temporary directory, for
    transformers' readers (a tokenizer reads its files by path)."""
    with tempfile.TemporaryDirectory(prefix="zerocopy-hf-") as d:
        for name, data in files.items():
            path = os.path.join(d, name)  # names are relative, without '..' (the daemon checked them)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        yield d


def _config(transformers, d: str, files: dict, ref: str):
    if "config.json" not in files:
        kept = ", ".join(sorted(files)) or "none"
        raise InvalidModelError(
            f"model {ref!r} keeps no config.json (its files: {kept}): preload the model's directory "
            f"(`zerocopy preload DIR` or ray_zerocopy.preload_pretrained), not a weights file", "FAILED_PRECONDITION")
    try:
        return transformers.AutoConfig.from_pretrained(d)
    except Exception as e:
        raise InvalidModelError(f"transformers {transformers.__version__} cannot read the config of model {ref!r}: "
                                f"{type(e).__name__}: {e}", "FAILED_PRECONDITION") from None


def _model_class(transformers, config, model_class, ref: str):
    """The class to build: the caller's (an Auto class resolved for this
    config), else the config's first architecture."""
    if model_class is not None:
        mapping = getattr(model_class, "_model_mapping", None)
        if mapping is None:
            return model_class
        from transformers.models.auto.auto_factory import _get_model_class
        try:
            return _get_model_class(config, mapping)
        except (KeyError, ValueError) as e:
            raise InvalidModelError(f"{model_class.__name__} has no class for the config of model {ref!r} "
                                    f"(model_type {config.model_type!r}): {e}", "INVALID_ARGUMENT") from None
    names = getattr(config, "architectures", None) or []
    if not names:
        raise InvalidModelError(f"the config of model {ref!r} names no architecture: pass model_class "
                                "(e.g. transformers.AutoModelForCausalLM)", "INVALID_ARGUMENT")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise InvalidModelError(f"the config of model {ref!r} names architecture {names[0]!r}, which transformers "
                                f"{transformers.__version__} does not have: pass model_class, or use a "
                                "transformers that has it", "FAILED_PRECONDITION")
    return cls


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


@contextlib.contextmanager
def _quiet(transformers):
    """No progress bar for a load of a few milliseconds."""
    logging = transformers.utils.logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _recipe(transformers, gpu, model_class) -> tuple | None:
    """What a kept skeleton of from_pretrained's is built with (_cache.py):
    the transformers, the device, the class asked for: one of
    transformers' by name, another by its source file as it is now (an
    edited class gets another skeleton); None (no skeleton kept) for a
    class without a file (defined in __main__, or sent by value)."""
    cls = None
    if model_class is not None:
        cls = f"{model_class.__module__}.{model_class.__qualname__}"
        if not model_class.__module__.startswith("transformers."):
            path = getattr(sys.modules.get(model_class.__module__), "__file__", None)
            if model_class.__module__ == "__main__" or not path:
                return None
            try:
                st = os.stat(path)
            except OSError:
                return None
            cls = (cls, path, st.st_mtime_ns, st.st_size)
    return ("transformers.from_pretrained", transformers.__version__, str(gpu or "cpu"), cls)


def from_pretrained(ref: str, device="cpu", model_class=None, dtype=None, socket: str | None = None):
    """The transformers model stored as `ref` (a name, a digest, or a Hub id
    given to preload_pretrained), built by transformers' own
    ``from_pretrained`` from the stored config with every checkpoint tensor
    mapped zero-copy: weights tied as transformers ties them, buffers the
    checkpoint lacks computed as transformers computes them, in eval mode,
    ``requires_grad=False``. `model_class`: the class to build (a model
    class or an Auto class such as ``AutoModelForSequenceClassification``;
    default: the config's first architecture). `device`: "cpu", or
    "cuda:N" for views of the GPU's one shared copy. `dtype`: the config's
    (the stored tensors') unless given; another dtype converts, which
    copies the weights into this process. Inside Ray, a model this node
    lacks is pulled from another node first.

    The first call of this user on this node for the model (and these
    arguments) builds it with transformers and keeps its skeleton in
    ~/.cache/zerocopy/skeletons ($ZEROCOPY_SKELETON_CACHE); later calls,
    in any process of the user, unpickle that skeleton over the mapping:
    the same model, in milliseconds. With `dtype` given, or a
    `model_class` defined in __main__, the model is built every time.

    Raises InvalidModelError when the model keeps no config, transformers
    cannot read it or lacks its architecture, or the class has tensors the
    checkpoint lacks or has in other shapes (naming the first few); nothing
    half-loaded is returned. Checkpoint tensors the class does not use (a
    base model from a checkpoint with a head) are left out, as
    transformers does, with its report."""
    transformers = _transformers()
    ref = _ref(ref)
    host = _store._map(ref, socket)
    gpu = _store.gpu_device(device)
    mapping = host if gpu is None else _store._map(host.digest, socket, device=gpu)
    recipe = None
    if dtype is None:  # another dtype copies the weights: nothing to keep
        recipe = _recipe(transformers, gpu, model_class)
    if recipe is not None:
        model = _cache.get(mapping, recipe)
        if model is not None:
            model.config.name_or_path = model.name_or_path = ref  # the digest's model, perhaps under another name
            return model
    files = host.files()
    with _files_on_disk(files, ref) as d:
        config = _config(transformers, d, files, ref)
        generation = (transformers.GenerationConfig.from_pretrained(d) if "generation_config.json" in files
                      else None)
    cls = _model_class(transformers, config, model_class, ref)
    with _store._no_gc():
        state = _store._state_dict(mapping)
    tensors = list(state.values())  # in the manifest's order, whatever transformers does with the dict
    try:
        with _quiet(transformers):
            # Mismatched shapes come back in `info` (to be named below), not as
            # transformers' own error, which names none.
            model, info = cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True,
                                              ignore_mismatched_sizes=True,
                                              dtype=dtype if dtype is not None else "auto")
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise InvalidModelError(f"model {ref!r} does not load as {cls.__name__}: {type(e).__name__}: {e}",
                                "INVALID_ARGUMENT") from None
    problems = []
    if info.get("missing_keys"):
        problems.append(f"the class has tensors the checkpoint lacks: {_first(info['missing_keys'])}")
    if info.get("mismatched_keys"):
        shown = [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in list(info["mismatched_keys"])[:5]]
        problems.append(f"shapes differ (checkpoint vs class): {', '.join(shown)}")
    if info.get("error_msgs"):
        problems.append("; ".join(str(m) for m in info["error_msgs"][:3]))
    if problems:
        raise InvalidModelError(f"model {ref!r} does not match {cls.__name__}: " + "; ".join(problems),
                                "INVALID_ARGUMENT")
    if generation is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config = generation  # as from_pretrained(DIR) reads it
    model.config.name_or_path = model.name_or_path = ref  # transformers says the directory; this is the store's name
    if gpu is not None:
        model.to(gpu)  # the buffers transformers computed; the weights are there already
    model.eval()
    model.requires_grad_(False)
    if recipe is not None:
        _cache.put(mapping, tensors, model, recipe)
    return model


def tokenizer(ref: str, socket: str | None = None, **kwargs):
    """The tokenizer stored with model `ref` (transformers' AutoTokenizer
    over its stored files; `kwargs` go to it)."""
    transformers = _transformers()
    ref = _ref(ref)
    files = _store._map(ref, socket, read_only=True).files()
    with _files_on_disk(files, ref) as d:
        try:
            return transformers.AutoTokenizer.from_pretrained(d, **kwargs)
        except Exception as e:
            kept = ", ".join(sorted(files)) or "none"
            raise InvalidModelError(f"model {ref!r} has no tokenizer transformers {transformers.__version__} can "
                                    f"read (its files: {kept}): {type(e).__name__}: {e}",
                                    "FAILED_PRECONDITION") from None
