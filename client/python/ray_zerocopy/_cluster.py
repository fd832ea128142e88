"""Models across the nodes of a Ray cluster: the only module that knows Ray.

Each node runs its own zerocopyd. A wrapper names its models by digest;
when this node's daemon lacks one and this process is part of a Ray
cluster, pull() brings the bytes from a node whose daemon holds it:

1. Sources, in order: the node that published the model (recorded in the
   wrapper), then every other live node whose daemon holds the digest (a
   node that pulled it serves the next). A probe is a zero-CPU Ray task
   pinned to the node (NodeAffinitySchedulingStrategy, soft=False) that
   asks that node's daemon for the model's manifest.
2. Claim: Client.receive(manifest, digest) reserves a staging segment for
   that digest in this node's daemon. The daemon allows one per digest, so
   one process per node transfers and the others (AlreadyExistsError) poll
   until the model appears. A claimant that dies leaves a staging file the
   daemon reclaims at the next waiter's retry, which then takes over.
3. Transfer: CHUNK_BYTES chunks, each read by a task pinned to the source
   (a read-only view of its mapping, which Ray copies into the source's
   object store once) and fetched with ray.get; at most IN_FLIGHT chunks
   exist at a time (object store use per transfer <= IN_FLIGHT x
   CHUNK_BYTES on each side), each written into the staging segment and
   dropped. A source that fails mid-way is replaced by the next one, from
   the first chunk not yet written.
4. Commit under the expected digest: the daemon hashes the file and refuses
   anything else, so an altered byte commits nothing. The model records its
   origin ("pulled from node X in T s": zerocopy ls, ray_zerocopy.stats()).

No new listener, no transport of our own: Ray moves the bytes.
"""
from __future__ import annotations

import collections
import functools
import itertools
import os
import sys
import time

from . import _native
from .errors import (AlreadyExistsError, CorruptModelError, DaemonUnavailableError, InvalidModelError,
                     ModelNotFoundError, ZeroCopyError)

CHUNK_BYTES = int(os.environ.get("ZEROCOPY_PULL_CHUNK_BYTES", 32 << 20))
IN_FLIGHT = 2
# How long a process waits for another one of its node to finish a pull,
# and for one chunk or probe to arrive.
WAIT_TIMEOUT_S = float(os.environ.get("ZEROCOPY_PULL_TIMEOUT_S", 600))
CHUNK_TIMEOUT_S = 120.0
# Test hooks, never set outside tests: the receiver flips one byte of the
# first chunk it receives (a transfer altered in flight); the receiver
# sleeps this many seconds after each chunk (a slow transfer to kill).
_CORRUPT_ENV = "ZEROCOPY_TEST_CORRUPT_PULL"
_PAUSE_ENV = "ZEROCOPY_TEST_PULL_PAUSE_S"


def ray_module():
    """The ray module if this process is part of a Ray cluster, else None
    (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray


def node_id() -> str | None:
    """This process's Ray node, or None outside Ray."""
    ray = ray_module()
    return ray.get_runtime_context().get_node_id() if ray is not None else None


# --- run on the source node (module level: Ray ships them by reference) ---

def _probe(digest: str) -> bytes | None:
    """The model's manifest if this node's daemon holds it, else None."""
    try:
        return _native.client().get(digest)["manifest"]
    except (ModelNotFoundError, DaemonUnavailableError):
        return None


def _read(digest: str, offset: int, length: int):
    """Bytes [offset, offset+length) of the model's segment: a read-only
    view of this node's mapping (it stays mapped until Ray has copied the
    view into the object store)."""
    import numpy as np
    mapping = _native.client().map(digest, read_only=True)
    return np.frombuffer(mapping, dtype=np.uint8, count=length, offset=offset)


def _publish(publish, obj):
    """A publish run on a cluster node for a driver without a daemon."""
    return publish(obj), node_id()


# --- run on the node that lacks the model ---

@functools.lru_cache(maxsize=None)
def _remote(fn):
    return sys.modules["ray"].remote(fn)


def _on(ray, fn, node: str):
    """fn as a zero-CPU task pinned to `node` (never elsewhere, never retried)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    return _remote(fn).options(num_cpus=0, max_retries=0,
                               scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))


def _alive_nodes(ray) -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]


def _sources(ray, digest: str, origin: str | None, here: str, tried: list):
    """Yields (node, manifest) for each live node whose daemon holds
    `digest`: the origin first, then the others, probed together. Nodes
    that do not hold it are added to `tried` with the reason."""
    alive = _alive_nodes(ray)
    if origin and origin != here:
        if origin not in alive:
            tried.append((origin, "not alive"))
        else:
            found = _probe_all(ray, digest, [origin], tried)
            yield from found
    others = [n for n in alive if n not in (here, origin)]
    yield from _probe_all(ray, digest, others, tried)


def _probe_all(ray, digest: str, nodes: list[str], tried: list):
    refs = {node: _on(ray, _probe, node).remote(digest) for node in nodes}
    found = []
    for node, ref in refs.items():
        try:
            manifest = ray.get(ref, timeout=CHUNK_TIMEOUT_S)
        except Exception as e:  # a dead node, a worker that could not start
            ray.cancel(ref)
            tried.append((node, f"probe failed: {type(e).__name__}"))
            continue
        if manifest is None:
            tried.append((node, "its daemon lacks it"))
        else:
            found.append((node, manifest))
    return found


def _tried_text(tried: list) -> str:
    """The nodes tried and why each failed, for an error message."""
    return "; ".join(f"node {n[:12]}: {why}" for n, why in tried)


def _not_found(digest: str, tried: list) -> ModelNotFoundError:
    nodes = _tried_text(tried) or "no other live node"
    return ModelNotFoundError(
        f"model {digest} is on no live node of this Ray cluster ({nodes}); preload it on a node "
        "(`zerocopy preload FILE`) or publish it again (ModelWrapper.from_model)", "NOT_FOUND")


class _SourceFailed(Exception):
    """A source node could not deliver a chunk (it died, its daemon went,
    its object store refused, a timeout): the next holder takes over."""


def _unavailable(digest: str, tried: list) -> ZeroCopyError:
    nodes = _tried_text(tried)
    return ZeroCopyError(f"model {digest} could not be brought to this node: every node that holds it failed "
                         f"to deliver it ({nodes}); retry, or preload it on this node (`zerocopy preload FILE`)",
                         "UNAVAILABLE")


def _copy(ray, incoming, digest: str, sources, tried: list) -> str:
    """Writes every chunk of the model into `incoming`, from the first source
    and then the next whenever one fails (from the first chunk not yet
    written). Returns the source that finished. Errors of this node (a
    write) are not blamed on a source: they propagate."""
    size = incoming.size
    offsets = list(range(0, size, CHUNK_BYTES))
    corrupt = os.environ.get(_CORRUPT_ENV) == "1"
    pause = float(os.environ.get(_PAUSE_ENV, 0))
    written = 0
    for node, _ in sources:
        read = _on(ray, _read, node)
        pending: collections.deque = collections.deque()
        submitted = written
        try:
            while written < len(offsets):
                if submitted < len(offsets) and len(pending) < IN_FLIGHT:
                    while submitted < len(offsets) and len(pending) < IN_FLIGHT:
                        offset = offsets[submitted]
                        pending.append(read.remote(digest, offset, min(CHUNK_BYTES, size - offset)))
                        submitted += 1
                    # Start moving every chunk in flight to this node now:
                    # the next ones cross while this one is written.
                    ray.wait(list(pending), num_returns=len(pending), timeout=0, fetch_local=True)
                expected = min(CHUNK_BYTES, size - offsets[written])
                try:
                    chunk = ray.get(pending.popleft(), timeout=CHUNK_TIMEOUT_S)
                except ray.exceptions.RayError as e:
                    raise _SourceFailed(f"{type(e).__name__}: {e}") from e
                if len(chunk) != expected:
                    raise _SourceFailed(f"chunk at {offsets[written]} has {len(chunk)} bytes, not {expected}")
                if corrupt and written == 0 and expected:
                    chunk = chunk.copy()
                    chunk[0] ^= 0xFF
                incoming.write(offsets[written], chunk)
                del chunk
                written += 1
                if pause:
                    time.sleep(pause)
            return node
        except _SourceFailed as e:
            tried.append((node, f"failed after {written} of {len(offsets)} chunks: {e}"[:300]))
            for ref in pending:
                ray.cancel(ref)
            pending.clear()  # dropping the refs frees their objects
    raise _unavailable(digest, tried)


def pull(digest: str, origin: str | None = None, socket: str | None = None, size: int = 0) -> bool:
    """Brings model `digest` (of `size` bytes, if known) into this node's
    daemon from another node of the Ray cluster (see the module's comment).
    Returns False outside Ray (nothing to pull from); True once the model is
    here, whoever brought it. Raises ModelNotFoundError when no live node
    holds it (naming the nodes tried), CorruptModelError when the bytes that
    arrived are not the digest (nothing is committed), ZeroCopyError
    (UNAVAILABLE) when every holder failed mid-way, (DEADLINE_EXCEEDED)
    when another process of the node has been at it for longer than
    ZEROCOPY_PULL_TIMEOUT_S plus a second per 8 MiB of the model.

    A restart of this node's daemon meanwhile (its staging models are gone)
    is waited out and the pull begins again."""
    ray = ray_module()
    if ray is None:
        return False
    client = _native.client(socket)
    here = node_id()
    deadline = time.monotonic() + WAIT_TIMEOUT_S + size / (8 << 20)
    tried: list = []
    sources = None
    first = None
    backoff = 0.05

    def wait(why: str):
        nonlocal backoff
        if time.monotonic() > deadline:
            raise ZeroCopyError(f"model {digest}: {why} for too long (ZEROCOPY_PULL_TIMEOUT_S, "
                                f"{WAIT_TIMEOUT_S:.0f} s, plus a second per 8 MiB); see zerocopyd's log",
                                "DEADLINE_EXCEEDED")
        time.sleep(backoff)
        backoff = min(backoff * 2, 1.0)

    while True:
        try:
            if _is_here(client, digest):
                return True
            if sources is None:
                sources = _sources(ray, digest, origin, here, tried)
                first = next(sources, None)
                if first is None:
                    raise _not_found(digest, tried)
            try:
                incoming = client.receive(first[1], digest)
            except AlreadyExistsError:
                wait("another process of this node has been transferring it")  # or just did
                continue
            try:
                start = time.monotonic()
                node = _copy(ray, incoming, digest, itertools.chain([first], sources), tried)
                incoming.commit("pulled", f"node {node}", int((time.monotonic() - start) * 1000))
                return True
            except InvalidModelError as e:
                raise CorruptModelError(f"model {digest} arrived altered, and this node's zerocopyd refused it "
                                        f"(nothing was committed): {e}", e.code) from None
            except ModelNotFoundError:
                wait("this node's zerocopyd lost the transfer (it restarted?)")  # its staging model is gone
                sources = None  # begin again
            finally:
                incoming.abort()  # no-op after a commit
        except DaemonUnavailableError:
            wait("this node's zerocopyd has been unreachable")


def _is_here(client, digest: str) -> bool:
    try:
        client.get(digest)
        return True
    except ModelNotFoundError:
        return False


def publish_remote(publish, obj):
    """For a driver whose machine runs no zerocopyd (e.g. connected with
    ray://): publishes `obj` with `publish` in a Ray task on a cluster node
    and returns (info, node). Raises the original error outside Ray."""
    ray = ray_module()
    if ray is None:
        return None
    return ray.get(_remote(_publish).options(num_cpus=0, max_retries=0).remote(publish, obj))


def pulled(models: list[dict]) -> list[dict]:
    """The models of a ListModels answer that this node pulled: digest,
    names, bytes, from which node, how long it took."""
    out = []
    for m in models:
        origin = m.get("origin") or {}
        if origin.get("kind") == "pulled":
            out.append({"digest": m["digest"], "names": m["names"], "bytes": m["size"],
                        "source": origin.get("source", ""), "seconds": origin.get("duration_ms", 0) / 1000})
    return out
