"""The C++ client (_zerocopy).

The extension lives next to this file: in an installed package, and in
the build tree's <build>/python/ray_zerocopy.
"""
try:
    from . import _zerocopy  # type: ignore[attr-defined]
except ImportError as e:
    raise ImportError(
        f"ray_zerocopy's C++ extension is missing ({e}): import the package from the build tree "
        "(PYTHONPATH=<build>/python) or install it (pip install ./client/python)") from e

def client(socket: str | None = None) -> "_zerocopy.Client":
    """This process's connection to zerocopyd at `socket` (default:
    $ZEROCOPY_SOCKET, then the daemon's default). The C++ client keeps one
    per process and socket; a forked child gets its own: a connection
    never crosses fork()."""
    return _zerocopy.Client(socket or "")


def default_socket() -> str:
    return _zerocopy.default_socket()


def torch_dtypes() -> list[tuple[str, str]]:
    """(torch's name of a dtype, its wire name) for each dtype zerocopy holds."""
    return _zerocopy.torch_dtypes()


def leaves_match(data, offset: int, size: int, leaves: bytes) -> bool:
    """Whether `data`, bytes [offset, offset + len(data)) of a model of
    `size` bytes (whole leaves), matches the model's leaf digests."""
    return _zerocopy.leaves_match(data, offset, size, leaves)
