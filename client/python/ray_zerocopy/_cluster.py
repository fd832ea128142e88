"""Models across the nodes of a Ray cluster: the only module that knows Ray
(with _directory, the state of its one actor).

Each node runs its own zerocopyd. A wrapper names its models by digest;
when this node's daemon lacks one and this process is part of a Ray
cluster, pull() brings the bytes from other nodes:

1. Where: the cluster's directory (_directory.py, a detached Ray actor)
   knows which nodes hold the digest, whole or in part (a node still
   pulling it serves what it has), with the model's manifest and leaf
   digests. When it knows none (a model preloaded with the CLI, a
   directory that was lost), probes find holders: the node that published
   the model first, then every other live node at once (zero-CPU tasks
   pinned to each, asking its daemon); what they find goes into the
   directory, so the next pullers ask it once instead.
2. Claim: Client.receive(manifest, digest) reserves a staging segment for
   that digest in this node's daemon. The daemon allows one per digest, so
   one process per node transfers and the others (AlreadyExistsError) poll
   until the model appears. A claimant that dies leaves a staging file the
   daemon reclaims at the next waiter's retry, which then takes over.
3. Source: the directory picks it and records this node as a holder that
   pulls from it, in one step (see _directory.py): the holder with the
   fewest pulls under way (at most MAX_SERVES each), complete before
   partial. Pullers that start together so form a chain in which every
   node's link carries the model once.
4. Transfer: one streaming generator task pinned to the source (_serve)
   yields CHUNK_BYTES chunks in this node's order (its chain's rotation,
   see _directory.py; after a switch, what the new source has first),
   from its committed segment or, on a node still pulling, from its
   staging file as each chunk arrives there. At most IN_FLIGHT chunks are unconsumed in the
   source's object store and as many on their way here: the object store
   holds a few chunks per pull, whatever the model's size. Every chunk is
   checked against the model's leaf digests before it is written (the
   leaves were checked against the digest first), so a relay that serves
   altered bytes is caught at the chunk, dropped as a source, and the
   pull goes on from another holder; one that fails or stalls is
   dropped and replaced, from the first chunk not yet written.
5. Commit under the expected digest: the daemon hashes the file and refuses
   anything else. The model records its origin ("pulled from node X in
   T s": zerocopy ls, ray_zerocopy.stats()), and the directory now lists
   this node as a complete holder.

No new listener, no transport of our own: Ray moves the bytes.
"""
from __future__ import annotations

import collections
import functools
import itertools
import os
import re
import sys
import time

from . import _directory, _native
from .errors import (AlreadyExistsError, CorruptModelError, DaemonUnavailableError, InvalidModelError,
                     ModelNotFoundError, ZeroCopyError)

LEAF_BYTES = 4 << 20  # the digest's leaf (common/include/zerocopy/digest.h): chunks are whole leaves
CHUNK_BYTES = -(-int(os.environ.get("ZEROCOPY_PULL_CHUNK_BYTES", 8 << 20)) // LEAF_BYTES) * LEAF_BYTES
IN_FLIGHT = int(os.environ.get("ZEROCOPY_PULL_IN_FLIGHT", 4))
# How long a source's generator task may take to return after its last
# chunk before it is cancelled (_stop).
GENERATOR_END_S = 2.0
# How long a process waits for another one of its node to finish a pull,
# and for one chunk or probe to arrive; how long a relay waits for a chunk
# it does not have yet before its puller looks elsewhere.
WAIT_TIMEOUT_S = float(os.environ.get("ZEROCOPY_PULL_TIMEOUT_S", 600))
CHUNK_TIMEOUT_S = 120.0
STALL_S = float(os.environ.get("ZEROCOPY_PULL_STALL_S", 10))
# The longest chain of pulls (each relaying to the next) a pull may end:
# 1 pulls only straight from a complete holder. Longer chains add latency
# to each chunk; shorter ones start more chains at the complete holders.
MAX_DEPTH = int(os.environ.get("ZEROCOPY_PULL_MAX_DEPTH", _directory.MAX_DEPTH))
# Test hooks, never set outside tests: the receiver flips one byte of the
# first chunk it receives (a transfer altered in flight); the receiver
# sleeps this many seconds after each chunk (a slow transfer to kill); a
# node serves every chunk with one byte flipped (a corrupt relay).
_CORRUPT_ENV = "ZEROCOPY_TEST_CORRUPT_PULL"
_PAUSE_ENV = "ZEROCOPY_TEST_PULL_PAUSE_S"
_CORRUPT_SERVE_ENV = "ZEROCOPY_TEST_CORRUPT_SERVE"


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

def _probe(digest: str) -> tuple | None:
    """(manifest, leaves) if this node's daemon holds the model, else None."""
    try:
        got = _native.client().get(digest, with_leaves=True)
    except (ModelNotFoundError, DaemonUnavailableError):
        return None
    return got["manifest"], got["leaves"]


def _committed(client, digest: str):
    """A read-only mapping of the model if this node's daemon holds it."""
    try:
        return client.map(digest, read_only=True)
    except ModelNotFoundError:
        return None


def _serve(digest: str, chunks: list, staging: str | None, leaves: bytes, size: int):
    """Yields chunks (offset, length) of the model, in order, from this
    node (a streaming generator task pinned here): from its committed
    segment, or while it still pulls the model, from the staging file
    `staging` as each chunk arrives there (its leaves match), waiting up to
    STALL_S for one. Both are read through a read-only mapping: the one
    copy of a chunk is Ray's, into the object store. Raises
    ModelNotFoundError when this node has neither (it evicted the model,
    or its pull failed), ZeroCopyError (stalled)."""
    import mmap

    import numpy as np
    client = _native.client()
    mapping = _committed(client, digest)
    partial = fd = None
    if mapping is None:
        try:
            fd = os.open(staging, os.O_RDONLY | os.O_CLOEXEC) if staging else None
        except FileNotFoundError:  # committed (renamed) or failed since the directory heard of it
            fd = None
        if fd is None:
            mapping = _committed(client, digest)
            if mapping is None:
                raise ModelNotFoundError(f"model {digest} is neither here nor being pulled here", "NOT_FOUND")
        else:
            # Still readable once committed (renamed: the bytes are all there)
            # or aborted (unlinked: the last link gone says so).
            partial = np.frombuffer(mmap.mmap(fd, size, prot=mmap.PROT_READ), dtype=np.uint8)
    corrupt = os.environ.get(_CORRUPT_SERVE_ENV) == "1"
    try:
        for offset, length in chunks:
            if partial is not None:
                out = partial[offset:offset + length]
                deadline = time.monotonic() + STALL_S
                seen, again = -1, 0.0  # the staging file's allocated blocks at the last look, and when to look anyway
                committed_check = time.monotonic() + 0.5
                while True:
                    # Hashed again once the file has grown since the last look,
                    # and every 50 ms: a page is allocated before its bytes are
                    # copied in, so the last page's bytes land after its block.
                    st = os.fstat(fd)
                    if (st.st_blocks != seen or time.monotonic() >= again) and _arrived(out, offset, size, leaves):
                        break
                    seen, again = st.st_blocks, time.monotonic() + 0.05
                    if time.monotonic() >= committed_check:
                        # This node's pull may have finished: from then on the
                        # daemon's copy (checked whole at commit) serves.
                        mapping = _committed(client, digest)
                        if mapping is not None:
                            partial = None
                            out = np.frombuffer(mapping, dtype=np.uint8, count=length, offset=offset)
                            break
                        committed_check = time.monotonic() + 0.5
                    if st.st_nlink == 0:
                        raise ModelNotFoundError(f"the pull of model {digest} on this node ended without it",
                                                 "NOT_FOUND")
                    if time.monotonic() > deadline:
                        raise ZeroCopyError(f"chunk at {offset} of model {digest} did not arrive here within "
                                            f"{STALL_S:.0f} s (ZEROCOPY_PULL_STALL_S)", "DEADLINE_EXCEEDED")
                    time.sleep(0.005)
            else:
                out = np.frombuffer(mapping, dtype=np.uint8, count=length, offset=offset)
            if corrupt:
                out = out.copy()
                out[length // 2] ^= 0xFF
            yield out
    finally:
        if fd is not None:
            os.close(fd)  # the mapping lives on until its last view goes


def _arrived(chunk, offset: int, size: int, leaves: bytes) -> bool:
    """Whether a chunk of a staging file (a view of it) is written: its last
    leaf first (cheap while waiting, and the last to be written), then the
    others. A hole reads as zeros: only the leaves tell."""
    last = (len(chunk) - 1) // LEAF_BYTES * LEAF_BYTES
    if not _native.leaves_match(chunk[last:], offset + last, size, leaves):
        return False
    return last == 0 or _native.leaves_match(chunk[:last], offset, size, leaves)


def _publish(publish, obj):
    """A publish run on a cluster node for a driver without a daemon."""
    return publish(obj), node_id()


# --- run on the node that lacks the model ---

@functools.lru_cache(maxsize=None)
def _remote(fn):
    return sys.modules["ray"].remote(fn)


def _on(ray, fn, node: str, **options):
    """fn as a zero-CPU task pinned to `node` (never elsewhere, never retried)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    return _remote(fn).options(num_cpus=0, max_retries=0,
                               scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False), **options)


class _Directory:
    """This process's handle on the cluster's directory actor. A directory
    that cannot be reached (it died with its node, its call timed out)
    answers nothing: pulls then find sources by probing, as without it."""

    CALL_TIMEOUT_S = 30.0

    def __init__(self, ray, create=lambda: True):
        """`create()`: whether to start the directory when there is none."""
        self.ray = ray
        self.actor = None
        self.created = False  # by this call: the actor is starting
        self.error = None  # why there is no directory (for error messages)
        try:
            self.actor, self.created = _directory_actor(ray, create)
        except Exception as e:  # no directory: probes only
            self.actor, self.error = None, e

    def ask(self, method: str, *args, **kwargs):
        """The answer of one call, or None (no directory)."""
        if self.actor is None:
            return None
        try:
            return self.ray.get(getattr(self.actor, method).remote(*args, **kwargs), timeout=self.CALL_TIMEOUT_S)
        except Exception as e:
            self.actor, self.error = None, e
            return None

    def tell(self, method: str, *args, **kwargs) -> None:
        """One call whose answer nobody waits for (progress, names)."""
        if self.actor is not None:
            getattr(self.actor, method).remote(*args, **kwargs)


def _directory_actor(ray, create):
    """The directory's actor handle (None when there is none and not
    create()), and whether this call made it."""
    try:
        return ray.get_actor(_directory.NAME, namespace=_directory.NAMESPACE), False
    except ValueError:
        if not create():
            return None, False
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    head = _head_node(ray)
    # On the head (only there: a soft choice may land it elsewhere), else here.
    where = NodeAffinitySchedulingStrategy(head, soft=False) if head else NodeAffinitySchedulingStrategy(node_id(),
                                                                                                      soft=True)
    return _remote(_directory.Directory).options(
        name=_directory.NAME, namespace=_directory.NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=0, scheduling_strategy=where).remote(), True


def _head_node(ray) -> str | None:
    """The head node (the GCS's): the directory lives there, so that it
    goes only with the cluster, not with the node that published first."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME
    return next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_NODE_RESOURCE_NAME in n["Resources"]),
                None)


def directory(ray=None) -> _Directory | None:
    """The directory's handle, or None outside Ray."""
    ray = ray or ray_module()
    return _Directory(ray) if ray is not None else None


def register(digest: str, name: str = "", socket: str | None = None) -> None:
    """Tells the cluster's directory that this node holds `digest` (just
    published here), with its manifest and leaf digests (so that the first
    pullers need no probe), and under `name` too. Nothing outside Ray, and
    on a one-node cluster nothing until a directory exists (no process is
    started for it there)."""
    ray = ray_module()
    if ray is None:
        return
    # One node: nobody to pull from it; a node that joins later finds it by probing.
    d = _Directory(ray, create=lambda: len(_alive_nodes(ray)) >= 2)
    if d.actor is None:
        return
    try:
        got = _native.client(socket).get(digest, with_leaves=True)
        d.tell("describe", digest, got["manifest"], got["leaves"])
    except ZeroCopyError:
        pass  # pullers ask a holder instead
    if name:
        d.tell("name", name, digest)
    if d.created:
        # The cluster's first publish starts the directory (a second or so,
        # once): waited for, or the first pullers would find it empty and
        # probe every node instead.
        d.ask("add", digest, node_id(), True)
    else:
        d.tell("add", digest, node_id(), True)


def bring(ref: str, socket: str | None = None) -> str | None:
    """For a model this node's daemon lacks, by digest or by name: inside
    Ray, its digest once pulled here (a name resolved through the cluster's
    directory, or where it knows none, by asking every node's daemon; then
    tagged with the name on this node too, where the name is free). None
    outside Ray, or when no node knows the name."""
    ray = ray_module()
    if ray is None:
        return None
    if DIGEST.fullmatch(ref):
        return ref if pull(ref, socket=socket) else None
    d = _Directory(ray)
    digest = d.ask("resolve", ref)
    if digest is None:
        digest = _probe_name(ray, ref)
        if digest is None:
            return None
        d.tell("name", ref, digest)
    pull(digest, socket=socket)
    try:
        _native.client(socket).tag(ref, digest)
    except ZeroCopyError:
        pass  # the name is someone else's here: the model is used by digest
    return digest


DIGEST = re.compile(r"[0-9a-f]{32}")  # a model reference that is a digest, not a name


def _resolve_here(name: str) -> str | None:
    """The digest this node's daemon has `name` point at, if it holds it."""
    try:
        return _native.client().get(name)["digest"]
    except (ModelNotFoundError, DaemonUnavailableError):
        return None


def _probe_name(ray, name: str) -> str | None:
    """The digest of the first live node whose daemon holds a model named
    `name` (the fallback when the directory knows no such name)."""
    here = node_id()
    refs = [_on(ray, _resolve_here, n).remote(name) for n in _alive_nodes(ray) if n != here]
    for ref in refs:
        try:
            digest = ray.get(ref, timeout=CHUNK_TIMEOUT_S)
        except Exception:  # a dead node: the others may know it
            continue
        if digest is not None:
            return digest
    return None


def _alive_nodes(ray) -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]


def _sources(ray, digest: str, origin: str | None, here: str, tried: list):
    """Yields (node, (manifest, leaves)) for each live node whose daemon
    holds `digest`: the origin first, then the others, probed together.
    Nodes that do not hold it are added to `tried` with the reason."""
    alive = _alive_nodes(ray)
    if origin and origin != here:
        if origin not in alive:
            tried.append((origin, "not alive"))
        else:
            found = _probe_all(ray, digest, [origin], tried)
            yield from found
    others = [n for n in alive if n not in (here, origin)]
    yield from _probe_all(ray, digest, others, tried)


def _stop(ray, gen, ended: bool) -> None:
    """Cancels a source's chunk generator unless its task has finished. A
    cancel that crosses the task's completion trips a check in Ray's core
    worker (task_manager.cc: "Tried to complete task that was not pending")
    that kills this process; after the last chunk (`ended`) the source's
    task is given a moment to return first, and after a failure (most often
    the source's own, its task ending as this one sees it) a shorter one,
    so only a source that is still serving is cancelled."""
    done, _ = ray.wait([gen.completed()], timeout=GENERATOR_END_S if ended else GENERATOR_END_S / 10,
                       fetch_local=False)
    if not done:
        ray.cancel(gen)


def _probe_all(ray, digest: str, nodes: list[str], tried: list):
    refs = {node: _on(ray, _probe, node).remote(digest) for node in nodes}
    found = []
    for node, ref in refs.items():
        try:
            described = ray.get(ref, timeout=CHUNK_TIMEOUT_S)
        except Exception as e:  # a dead node, a worker that could not start
            ray.cancel(ref)
            tried.append((node, f"probe failed: {type(e).__name__}"))
            continue
        if described is None:
            tried.append((node, "its daemon lacks it"))
        else:
            found.append((node, described))
    return found


def _tried_text(tried: list) -> str:
    """The nodes tried and why each failed (and what the directory said
    when it had no other source), for an error message."""
    return "; ".join(f"the directory {why}" if n == "directory" else f"node {n[:12]}: {why}" for n, why in tried)


def _not_found(digest: str, tried: list) -> ModelNotFoundError:
    nodes = _tried_text(tried) or "no other live node"
    return ModelNotFoundError(
        f"model {digest} is on no live node of this Ray cluster ({nodes}); preload it on a node "
        "(`zerocopy preload FILE`) or publish it again (ModelWrapper.from_model)", "NOT_FOUND")


class _SourceFailed(Exception):
    """A source node could not deliver a chunk (it died, its daemon went,
    its object store refused, a timeout, it stalled) or delivered one that
    is not the model's (`corrupt`): another holder takes over."""

    def __init__(self, message: str, corrupt: bool = False):
        super().__init__(message)
        self.corrupt = corrupt


def _unavailable(digest: str, tried: list) -> ZeroCopyError:
    nodes = _tried_text(tried)
    return ZeroCopyError(f"model {digest} could not be brought to this node: every node that holds it failed "
                         f"to deliver it ({nodes}); retry, or preload it on this node (`zerocopy preload FILE`)",
                         "UNAVAILABLE")


def _chunks(size: int) -> list:
    return [(offset, min(CHUNK_BYTES, size - offset)) for offset in range(0, size, CHUNK_BYTES)]


class _Transfer:
    """One pull's chunks, written into `incoming` from the sources the
    directory hands out (or, without one, the holders probes found)."""

    def __init__(self, ray, d: _Directory, incoming, digest: str, leaves: bytes, here: str, tried: list):
        self.ray, self.d, self.incoming, self.digest, self.leaves = ray, d, incoming, digest, leaves
        self.here, self.tried = here, tried
        self.chunks = _chunks(incoming.size)
        self.need = set(range(len(self.chunks)))
        self.order = list(range(len(self.chunks)))
        self.exclude: list = []
        self.corrupt: list = []  # sources that served bytes that are not the model's
        self.reported: list = []
        self.last_report = time.monotonic()
        self.started = time.monotonic()
        self.first_s = self.last_s = None  # when the first and the last chunk were written

    def run(self, assignment: dict | None, probed) -> str:
        """Writes every chunk; returns the node that delivered the last."""
        if assignment is not None and assignment.get("start"):
            # This chain's order (a relay's, which it follows): a rotation.
            first = int(assignment["start"] * len(self.chunks)) % max(len(self.chunks), 1)
            self.order = self.order[first:] + self.order[:first]
        source = assignment
        while True:
            if source is not None and source.get("busy"):
                source = self.wait_for_source(next(i for i in self.order if i in self.need))
            while source is None or source.get("busy") or source["source"] in self.exclude:
                source = next(probed, None)  # no directory, or none of its holders could serve
                if source is None:
                    if self.corrupt:
                        raise CorruptModelError(
                            f"model {self.digest} arrived altered from node(s) "
                            f"{', '.join(n[:12] for n in self.corrupt)} (caught at the chunk by its leaf digests; "
                            f"nothing was committed) and no other holder could deliver it: "
                            f"{_tried_text(self.tried)}", "DATA_LOSS")
                    if len(self.need) == len(self.chunks):
                        raise _not_found(self.digest, self.tried)  # nobody delivered a byte
                    raise _unavailable(self.digest, self.tried)
            node = source["source"]
            try:
                self._from(node, source.get("staging"), source.get("have"))
                self._report(force=True)
                return node
            except _SourceFailed as e:
                self.tried.append((node, f"failed with {len(self.need)} of {len(self.chunks)} chunks to go: "
                                         f"{e}"[:300]))
                self.exclude.append(node)
                if e.corrupt:
                    self.corrupt.append(node)
                self._report(force=True)
                first = next(i for i in self.order if i in self.need)
                source = self.d.ask("switch", self.digest, self.here, node, first, self.exclude)
                if source is None:
                    why = (f"unreachable ({type(self.d.error).__name__}: {str(self.d.error)[:200]})"
                           if self.d.actor is None else f"knows no other holder of chunk {first}")
                    self.tried.append(("directory", why))

    def wait_for_source(self, first: int) -> dict | None:
        """A source for chunk `first` once a holder that has it is below its
        limit of pulls (STALL_S at most); None when none has it."""
        deadline = time.monotonic() + STALL_S
        while time.monotonic() < deadline:
            time.sleep(0.1)
            source = self.d.ask("switch", self.digest, self.here, None, first, self.exclude)
            if source is None or not source.get("busy"):
                return source
        return None

    def _from(self, node: str, staging: str | None, have: list | None = None) -> None:
        """The chunks still needed from `node`: those it has (`have`, for a
        holder still pulling) first, then the others as they reach it."""
        ray = self.ray
        todo = [i for i in self.order if i in self.need]
        if have:
            held = set(have)
            todo = [i for i in todo if i in held] + [i for i in todo if i not in held]
        gen = _on(ray, _serve, node, _generator_backpressure_num_objects=IN_FLIGHT).remote(
            self.digest, [self.chunks[i] for i in todo], staging, self.leaves, self.incoming.size)
        corrupt_test = os.environ.get(_CORRUPT_ENV) == "1"
        pause = float(os.environ.get(_PAUSE_ENV, 0))
        pending: collections.deque = collections.deque()
        ended = False
        try:
            for i in todo:
                while len(pending) < IN_FLIGHT:
                    # Take every chunk the source has ready and start moving it here:
                    # the next ones cross while this one is written.
                    ready, _ = ray.wait([gen], timeout=0 if pending else STALL_S + CHUNK_TIMEOUT_S,
                                        fetch_local=False)
                    if not ready:
                        if pending:
                            break
                        raise _SourceFailed("no chunk arrived in time")
                    try:
                        ref = next(gen)
                    except StopIteration:
                        break
                    ray.wait([ref], timeout=0, fetch_local=True)
                    pending.append(ref)
                if not pending:
                    raise _SourceFailed("its generator ended early")
                offset, length = self.chunks[i]
                try:
                    chunk = ray.get(pending.popleft(), timeout=CHUNK_TIMEOUT_S)
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None) or e
                    raise _SourceFailed(f"{type(cause).__name__}: {str(cause)[:200]}") from e
                if len(chunk) != length:
                    raise _SourceFailed(f"chunk at {offset} has {len(chunk)} bytes, not {length}")
                if corrupt_test and self.need == set(range(len(self.chunks))) and length:
                    chunk = chunk.copy()
                    chunk[0] ^= 0xFF
                try:
                    self.incoming.write(offset, chunk)  # checked against the leaves first
                except CorruptModelError as e:
                    raise _SourceFailed(f"served bytes that are not the model's ({e})", corrupt=True) from e
                del chunk
                self.last_s = time.monotonic() - self.started
                if self.first_s is None:
                    self.first_s = self.last_s
                self.need.discard(i)
                self.reported.append(i)
                self._report()
                if pause:
                    time.sleep(pause)
            ended = True
        finally:
            pending.clear()  # dropping the refs frees their objects
            _stop(ray, gen, ended)

    def report(self, ok: bool, node: str | None, start: float, tried: list) -> dict:
        """What recent_pulls() lists for this pull."""
        return {"digest": self.digest, "ok": ok, "source": node, "seconds": time.monotonic() - start,
                "first_chunk_s": self.first_s, "last_chunk_s": self.last_s, "chunks": len(self.chunks),
                "dropped": list(tried)}

    def _report(self, force: bool = False) -> None:
        """Tells the directory which chunks this node has (its relays' pullers
        choose by it): every few chunks, or when asked."""
        if self.reported and (force or len(self.reported) >= 4 or time.monotonic() - self.last_report > 0.5):
            self.d.tell("progress", self.digest, self.here, self.reported)
            self.reported = []
            self.last_report = time.monotonic()


def _probed_sources(ray, d: _Directory, digest: str, origin: str | None, here: str, tried: list):
    """Holders found by probing, as assignments (with the manifest and
    leaves their daemons gave), each told to the directory."""
    for node, (manifest, leaves) in _sources(ray, digest, origin, here, tried):
        d.tell("add", digest, node, True)
        yield {"source": node, "complete": True, "staging": None, "start": 0.0, "have": None, "manifest": manifest,
               "leaves": leaves}


_RECENT: collections.deque = collections.deque(maxlen=16)


def recent_pulls() -> list[dict]:
    """This process's last pulls: digest, ok, the node that delivered the
    last chunk, seconds (and when the first and the last chunk were
    written, from the transfer's start), and the sources dropped on the
    way, with why."""
    return list(_RECENT)


def pull(digest: str, origin: str | None = None, socket: str | None = None, size: int = 0) -> bool:
    """Brings model `digest` (of `size` bytes, if known) into this node's
    daemon from other nodes of the Ray cluster (see the module's comment).
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
    d = _Directory(ray)
    deadline = time.monotonic() + WAIT_TIMEOUT_S + size / (8 << 20)
    tried: list = []
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
            probed = _probed_sources(ray, d, digest, origin, here, tried)
            described = d.ask("lookup", digest)
            if described is None or described["manifest"] is None:
                described, probed = _describe(d, digest, probed, tried)
            try:
                incoming = client.receive(described["manifest"], digest)
            except AlreadyExistsError:
                wait("another process of this node has been transferring it")  # or just did
                continue
            committed = False
            try:
                try:
                    incoming.set_leaves(described["leaves"])
                except CorruptModelError as e:
                    raise CorruptModelError(f"model {digest}: the leaf digests a holder gave are not the model's "
                                            f"({e}); nothing was written", e.code) from None
                start = time.monotonic()
                transfer = _Transfer(ray, d, incoming, digest, described["leaves"], here, tried)
                try:
                    node = transfer.run(d.ask("join", digest, here, incoming.path, max_depth=MAX_DEPTH), probed)
                    incoming.commit("pulled", f"node {node}", int((time.monotonic() - start) * 1000))
                except ZeroCopyError:
                    _RECENT.append(transfer.report(False, None, start, tried))
                    raise
                committed = True
                _RECENT.append(transfer.report(True, node, start, tried))
                return True
            except InvalidModelError as e:
                raise CorruptModelError(f"model {digest} arrived altered, and this node's zerocopyd refused it "
                                        f"(nothing was committed): {e}", e.code) from None
            except ModelNotFoundError:
                wait("this node's zerocopyd lost the transfer (it restarted?)")  # its staging model is gone
            finally:
                incoming.abort()  # no-op after a commit
                d.tell("done", digest, here, committed)
        except DaemonUnavailableError:
            wait("this node's zerocopyd has been unreachable")


def _describe(d: _Directory, digest: str, probed, tried: list):
    """The model's manifest and leaves as the first holder probes find gave
    them (told to the directory); and the probed holders, that one first.
    Raises ModelNotFoundError when no live node holds it."""
    first = next(probed, None)
    if first is None:
        raise _not_found(digest, tried)
    d.tell("describe", digest, first["manifest"], first["leaves"])
    return {"manifest": first["manifest"], "leaves": first["leaves"]}, itertools.chain([first], probed)


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
