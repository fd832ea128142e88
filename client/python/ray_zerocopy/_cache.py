"""What this user's processes on this node keep between them, under
~/.cache/zerocopy: the programs of AOTInductor packages (_export) and the
skeletons of built models (below), among them torch.export programs
(_export.load_exported: the ExportedProgram, or its JSON read into torch's
schema objects).

A built-model skeleton is what a slow builder (transformers'
``from_pretrained`` in _hf) made from a model, pickled over the model's
mapping: every tensor that is a view of one of the model's tensors is a
reference to it (a skeleton, as publish() makes), the few others (buffers
the builder computed, such as rotary ``inv_freq``) are pickled whole. The
first process of a user on the node builds the model and writes the
skeleton; the next ones unpickle it over their own mapping, in
milliseconds, with the same objects, the same tied weights and the same
views of the one shared copy.

A skeleton is code: unpickling it runs whatever it names. One is read only
from a file this user owns, that no one else may write, in directories no
one else may write: it is then what this user's own process wrote, as
trusted as the user's code. Its name covers the model's digest (weights
and files), the builder's arguments, the versions of Python, torch and the
builder's library, and the skeleton's format, so another build gets
another file. One that does not unpickle is removed and built again, one unread
for UNUSED_DAYS is removed when another is written. Nothing here is
needed, and anything may be deleted at any time: a cache that cannot be
used (not this user's, unwritable) costs the build, with one warning per
process.
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import os
import pickle
import stat
import sys
import tempfile
import time
import warnings

import torch

from . import _store

# A skeleton file's first line; the second is its key (below).
MAGIC = b"zerocopy-built-skeleton/1\n"

# A skeleton holding more bytes than this of tensors that are not the
# model's is not kept: the builder copied the weights (another dtype, a
# conversion) and its skeleton would be a private copy of them.
MAX_OWN_BYTES = 64 << 20

# A skeleton no process has read for this long is removed when another is
# written (a read marks it used, at most once a day).
UNUSED_DAYS = 30
_DAY = 86400


def directory(variable: str, leaf: str) -> str:
    """$variable, else ~/.cache/zerocopy/<leaf>."""
    return os.environ.get(variable) or os.path.join(os.path.expanduser("~"), ".cache", "zerocopy", leaf)


def made_private(path: str) -> bool:
    """`path` made (with its parents) if missing; whether it is then a
    directory of this user's that no one else may write."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return private(path)


def private(path: str) -> bool:
    """A directory of this user's that no one else may write (not a link)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _root() -> str:
    return directory("ZEROCOPY_SKELETON_CACHE", "skeletons")


_warned = False


def _warn_once(message: str) -> None:
    """One warning per process, attributed to the caller's line that called
    into ray_zerocopy (from_pretrained, load_exported)."""
    global _warned
    if not _warned:
        _warned = True
        package = os.path.dirname(os.path.abspath(__file__)) + os.sep
        frame, level = sys._getframe(1), 2  # warn's stacklevel of this function's caller
        while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
            frame, level = frame.f_back, level + 1
        warnings.warn(f"zerocopy: {message}; what the cache would keep is made again in each process (slower)",
                      RuntimeWarning, stacklevel=level)


def _key(recipe: tuple) -> bytes:
    versions = (sys.version_info[:3], torch.__version__, _store.MAGIC)
    return repr((recipe, versions)).encode()


def _header(key: bytes) -> bytes:
    """A skeleton file's first two lines: the format and the key."""
    return MAGIC + key + b"\n"


def _path(digest: str, key: bytes) -> str:
    return os.path.join(_root(), digest, hashlib.sha256(key).hexdigest()[:40] + ".pkl")


def get(mapping, recipe: tuple):
    """The object built from `mapping`'s model with `recipe` (the builder's
    name, arguments and library versions), unpickled over `mapping`; None
    when there is none (or none this process may trust)."""
    key = _key(recipe)
    path = _path(mapping.digest, key)
    if not os.path.exists(path):
        return None
    if not (private(_root()) and private(os.path.dirname(path))):
        _warn_once(f"{os.path.dirname(path)} or {_root()} is not a directory of this user's (uid {os.geteuid()}) "
                   "that no one else may write; no skeleton in it is read")
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            _warn_once(f"{path} is not this user's own file (uid {os.geteuid()}) or others may write it; "
                       "it is not read")
            return None
        data = f.read()
        if time.time() - st.st_mtime > _DAY:  # in use: kept by put()'s pruning (once a day at most: a write)
            try:
                os.utime(f.fileno())
            except OSError:
                pass
    header = _header(key)
    if not data.startswith(header):  # another key of the same hash, or a file cut short
        return None
    try:
        return _store.unpickle(mapping, memoryview(data)[len(header):])
    except Exception:  # written by a process that died mid-way, or by code that changed since
        _remove(path)
        return None


def put(mapping, tensors, obj, recipe: tuple, reduce=lambda o: NotImplemented) -> bool:
    """Keeps `obj`, built from `mapping`'s model, for get(): `tensors` are
    the mapping's tensors in the manifest's order (as _store._state_dict
    made them); every tensor of `obj` that views one of them is pickled as
    a reference; `reduce(o)` pickles the objects pickle cannot take as they
    are (a reduction, NotImplemented for the others; one that raises keeps
    nothing). False (no skeleton written) when `obj` does not pickle or
    holds more than MAX_OWN_BYTES of tensors of its own (a marker then
    saves later builds the attempt; not for a RecursionError, which
    depends on the caller's stack), or the cache cannot be written."""
    by_view = {}
    for i, t in enumerate(tensors):
        by_view.setdefault(_absolute_view(t), i)
    own = [0]

    def other(o):
        # A storage that is not the model's (a buffer the builder computed):
        # its bytes inline, unpickled without torch.load's first-call set-up
        # (~3 ms in a fresh process).
        code = "U8"
        if isinstance(o, torch.storage.TypedStorage):
            code = _store.dtype_code(o.dtype)
            o = o._untyped_storage
        if not isinstance(o, torch.UntypedStorage):
            return None
        own[0] += o.nbytes()
        if own[0] > MAX_OWN_BYTES:
            raise _TooBig
        host = o if o.device.type == "cpu" else o.cpu()
        data = ctypes.string_at(host.data_ptr(), host.nbytes()) if host.nbytes() else b""
        return ("bytes", code, str(o.device), data)

    key = _key(recipe)
    path = _path(mapping.digest, key)
    refused = path[:-len(".pkl")] + ".none"  # this build does not keep: not tried again (until pruned)
    if os.path.exists(refused):
        return False
    buffer = io.BytesIO()
    buffer.write(_header(key))
    try:
        _store.skeleton_pickler(pickle.Pickler, _absolute_view, by_view, other, reduce)(
            buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except RecursionError:  # nested deeper than this caller's stack allows: another caller may keep it
        return False
    except Exception:  # too big, or an object pickle cannot take (a closure, a handle): built each time
        try:
            _write(refused, _header(key))
        except OSError:
            pass
        return False
    try:
        _write(path, buffer.getbuffer())
    except OSError as e:
        _warn_once(f"cannot write {path}: {e}")
        return False
    _prune()
    return True


def _prune() -> None:
    """Removes the skeletons no process has read for UNUSED_DAYS (a model
    since removed, a library since upgraded), and the directories they
    leave empty. Anything in the cache may go at any time: a process that
    finds no skeleton builds the model."""
    cutoff = time.time() - UNUSED_DAYS * _DAY
    for d in _entries(_root()):
        for path in _entries(d):
            try:
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(d)  # only when empty
        except OSError:
            pass


class _TooBig(Exception):
    pass


def _absolute_view(t: torch.Tensor) -> tuple:
    """What makes two tensors the same view of the same memory, whatever
    storage object each holds (a parameter transformers made over a mapped
    tensor has the same address, perhaps not the same storage object)."""
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def _entries(d: str) -> list:
    try:
        return [os.path.join(d, name) for name in os.listdir(d)]
    except OSError:
        return []


def _write(path: str, data) -> None:
    """`data` as `path`, whole or not at all (a rename), in directories of
    this user's that no one else may write."""
    parent = os.path.dirname(path)
    for d in (_root(), parent):
        if not made_private(d):
            raise OSError(f"{d} is not a directory of this user's that no one else may write")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
