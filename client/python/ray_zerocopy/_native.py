"""The C++ client (_zerocopy) and one connection per process.

The extension lives next to this file: in an installed package, and in
the build tree's <build>/python/ray_zerocopy.
"""
import os
import threading

try:
    from . import _zerocopy  # type: ignore[attr-defined]
except ImportError as e:
    raise ImportError(
        f"ray_zerocopy's C++ extension is missing ({e}): import the package from the build tree "
        "(PYTHONPATH=<build>/python) or install it (pip install ./client/python)") from e

_lock = threading.Lock()
_clients: dict = {}  # (pid, socket) -> _zerocopy.Client


def client(socket: str | None = None) -> "_zerocopy.Client":
    """The connection of this process to zerocopyd at `socket` (default:
    $ZEROCOPY_SOCKET, then the daemon's default). A forked child gets its
    own: a connection never crosses fork()."""
    # The default resolves now ($ZEROCOPY_SOCKET may have changed since).
    socket = socket or _zerocopy.default_socket()
    key = (os.getpid(), socket)
    with _lock:
        c = _clients.get(key)
        if c is None:
            if len(_clients) and next(iter(_clients))[0] != key[0]:
                _clients.clear()  # inherited from the parent: never touch them
            c = _zerocopy.Client(socket)
            _clients[key] = c
        return c


def default_socket() -> str:
    return _zerocopy.default_socket()
