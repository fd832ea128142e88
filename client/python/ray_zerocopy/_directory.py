"""The cluster's directory of models: which node holds which digest, and
how much of it while it pulls. One detached Ray actor per cluster
(``zerocopy_directory`` in namespace ``zerocopy``), made by the first
process that needs it, on the head node (it goes only with the cluster;
any node's processes find it by name). Only ``_cluster`` talks to it.

What it keeps is a hint, never trusted for integrity: a puller checks
every chunk against the model's leaf digests, and those leaves against the
digest it asked for, before it writes a byte; the daemon rehashes the
whole model at commit. A stale entry (a node that evicted the model, or
died) costs one failed attempt: the puller reports it and the directory
drops it.

Per digest it keeps the model's manifest and leaf digests (so a puller
needs no probe once any pull began), and per holder: complete or still
pulling, which chunks it has (as its puller last reported), the staging
file its relays read, whom it pulls from, and how many pulls it serves.

Choosing a source (``join``, ``switch``): among the holders that have the
first chunk the puller needs (a complete holder has all; a puller still
pulling counts when it has it, or when the caller follows it from the
start) and are not at their limit of ``max_serves`` pulls, the one with
the fewest pulls under way; then complete before partial; then the one
that started first. N pullers that join at once so form a chain (node 0
-> 1 -> 2 ...) in which every link carries the model once: about one
link-time for all, instead of N - 1 through node 0's link. A puller never
extends a chain past ``max_depth`` relays (each adds its latency to every
chunk): it branches off a shallower holder instead, so a large cluster is
a tree of chains of bounded depth. A holder that failed a puller (died,
lacked the model, stalled, served bytes that are not the model's) is
dropped; probes find it again if it still holds the model.

Where a chain starts: each chain that starts at a complete holder takes the
model's chunks in a rotated order, starting at a fraction of the model
(``start``: 0, 1/2, 1/4, 3/4, ... for the model's successive chains), and
its relays follow it in that order. Chains so hold different parts of the
model while they pull: when the complete holders go (the publisher's node
died) before anyone finished, the chains that hold every chunk between
them finish from each other (``switch`` answers with what the new source
has, which the puller takes first).
"""
from __future__ import annotations

import time

NAME = "zerocopy_directory"
NAMESPACE = "zerocopy"
MAX_SERVES = 2
# The longest chain a puller may extend: every relay adds its latency to
# each chunk, so past this depth a puller starts a new branch higher up
# (a relay serving two halves its rate to each, once).
MAX_DEPTH = 16


class Directory:
    """The actor's state. Plain methods, one caller at a time (a Ray
    actor's default): every decision and its bookkeeping in one call."""

    def __init__(self, max_serves: int = MAX_SERVES, max_depth: int = MAX_DEPTH):
        self.max_serves = max_serves
        self.max_depth = max_depth
        self.models: dict[str, dict] = {}  # digest -> {"manifest", "leaves", "holders"}
        self.names: dict[str, str] = {}  # name -> digest

    # --- what pullers ask -------------------------------------------------

    def lookup(self, digest: str) -> dict | None:
        """The model's manifest and leaves (None until someone gave them),
        and its holders as {node: complete}; None if no holder is known."""
        m = self.models.get(digest)
        if m is None or not m["holders"]:
            return None
        return {"manifest": m["manifest"], "leaves": m["leaves"],
                "holders": {n: h["complete"] for n, h in m["holders"].items()}}

    def describe(self, digest: str, manifest: bytes, leaves: bytes) -> None:
        m = self._model(digest)
        if m["manifest"] is None:
            m["manifest"], m["leaves"] = manifest, leaves

    def add(self, digest: str, node: str, complete: bool = True) -> None:
        """`node` holds the model (a publish, a commit, a probe found it)."""
        m = self._model(digest)
        h = m["holders"].get(node)
        if h is None:
            m["holders"][node] = self._holder(complete)
        elif complete:
            self._finish(m, node, h)

    def join(self, digest: str, node: str, staging: str | None = None, exclude: list | tuple = (),
             max_depth: int | None = None) -> dict | None:
        """Picks the source of `node`'s pull and records `node` as a holder
        that pulls from it into `staging` (the file its relays read), in
        one step: pullers that join at once see each other. `max_depth`:
        the longest chain of pulls the caller may end (1: only straight
        from a complete holder; the directory's limit by default). None when no holder is known
        (the caller probes); {"busy": True} when every holder serves its
        limit (the caller waits)."""
        m = self.models.get(digest)
        if m is None:
            return None
        h = m["holders"].get(node)
        if h is None or h["complete"]:
            h = m["holders"][node] = self._holder(False)
        h["staging"] = staging
        return self._assign(m, node, h, 0, exclude, follow=True,
                            max_depth=self.max_depth if max_depth is None else max_depth)

    def switch(self, digest: str, node: str, failed: str | None, chunk: int, exclude: list | tuple = ()) -> dict | None:
        """`node`'s source `failed` (died, lacked the model, stalled, or
        served bytes that are not the model's): it is dropped as a holder.
        Picks another source that has chunk `chunk`, the first `node` still
        needs, as join() answers."""
        m = self.models.get(digest)
        if m is None:
            return None
        if failed is not None:
            self._drop(m, failed)
        h = m["holders"].get(node)
        if h is None:
            h = m["holders"][node] = self._holder(False)
        self._release(m, h)
        return self._assign(m, node, h, chunk, exclude, follow=False)

    def progress(self, digest: str, node: str, have: list) -> None:
        """The chunks `node` has written and checked so far."""
        h = self._model(digest)["holders"].get(node)
        if h is not None:
            h["have"].update(have)

    def done(self, digest: str, node: str, ok: bool) -> None:
        """`node`'s pull ended: committed (it now holds the whole model), or
        failed (it holds nothing)."""
        m = self.models.get(digest)
        if m is None:
            return
        h = m["holders"].get(node)
        if h is None:
            if ok:
                m["holders"][node] = self._holder(True)
            return
        if ok:
            self._finish(m, node, h)
        else:
            self._drop(m, node)

    def remove(self, digest: str, node: str) -> None:
        """`node` no longer holds the model (deleted, evicted)."""
        m = self.models.get(digest)
        if m is not None:
            self._drop(m, node)

    def sources(self, digest: str) -> dict:
        """{node: {"complete", "serving", "source", "start", "have" (the
        chunks it reported)}}: for tests and `ray_zerocopy.stats()`."""
        m = self.models.get(digest)
        if m is None:
            return {}
        return {n: {"complete": h["complete"], "serving": h["serving"], "source": h["source"],
                    "start": h["start"], "have": sorted(h["have"])} for n, h in m["holders"].items()}

    # --- names ------------------------------------------------------------

    def name(self, name: str, digest: str) -> None:
        self.names[name] = digest

    def resolve(self, name: str) -> str | None:
        return self.names.get(name)

    # --- inside -----------------------------------------------------------

    def _model(self, digest: str) -> dict:
        m = self.models.get(digest)
        if m is None:
            m = self.models[digest] = {"manifest": None, "leaves": None, "holders": {}, "chains": 0}
        return m

    @staticmethod
    def _holder(complete: bool) -> dict:
        return {"complete": complete, "serving": 0, "source": None, "staging": None, "start": 0.0,
                "have": set(), "since": time.monotonic()}

    @staticmethod
    def _has(h: dict, chunk: int) -> bool:
        return h["complete"] or chunk in h["have"]

    def _assign(self, m: dict, node: str, h: dict, chunk: int, exclude, follow: bool,
                max_depth: int | None = None) -> dict | None:
        max_depth = self.max_depth if max_depth is None else max_depth
        best = None
        busy = False
        for n, c in m["holders"].items():
            if n == node or n in exclude:
                continue
            # A partial holder serves what it has; one that is pulling can be
            # followed from the start (it serves chunks as they arrive), but
            # never one that pulls, directly or not, from `node` (a cycle).
            if not self._has(c, chunk) and not (follow and not c["complete"] and not self._downstream(m, n, node)):
                continue
            if c["serving"] >= self.max_serves:
                busy = True
                continue
            too_deep = not c["complete"] and self._depth(m, n) >= max_depth
            key = (too_deep, c["serving"], not c["complete"], c["since"])
            if best is None or key < best[0]:
                best = (key, n, c)
        if best is None:
            return {"busy": True} if busy else None
        _, n, c = best
        c["serving"] += 1
        h["source"] = n
        if follow:  # a new pull: it sets its order once
            if c["complete"]:
                h["start"] = _spread(m["chains"])  # a new chain
                m["chains"] += 1
            else:
                h["start"] = c["start"]  # a relay's downstream takes the chunks in the order they reach it
        return {"source": n, "complete": c["complete"], "staging": c["staging"], "start": h["start"],
                "have": None if c["complete"] else sorted(c["have"]),
                "manifest": m["manifest"], "leaves": m["leaves"]}

    def _depth(self, m: dict, n: str) -> int:
        """How many relays are between holder `n` and a complete holder."""
        depth, seen = 0, set()
        while n is not None and n not in seen:
            h = m["holders"].get(n)
            if h is None or h["complete"]:
                break
            seen.add(n)
            depth += 1
            n = h["source"]
        return depth

    def _downstream(self, m: dict, n: str, node: str) -> bool:
        """Whether holder `n` pulls, directly or through others, from `node`."""
        seen = set()
        while n is not None and n not in seen:
            if n == node:
                return True
            seen.add(n)
            h = m["holders"].get(n)
            n = h["source"] if h is not None else None
        return False

    def _release(self, m: dict, h: dict) -> None:
        src = m["holders"].get(h["source"]) if h["source"] is not None else None
        if src is not None and src["serving"] > 0:
            src["serving"] -= 1
        h["source"] = None

    def _finish(self, m: dict, node: str, h: dict) -> None:
        self._release(m, h)
        h["complete"], h["staging"], h["have"] = True, None, set()

    def _drop(self, m: dict, node: str) -> None:
        h = m["holders"].pop(node, None)
        if h is not None:
            self._release(m, h)


def _spread(k: int) -> float:
    """The k-th chain's start, as a fraction of the model: 0, 1/2, 1/4,
    3/4, 1/8, ... (the van der Corput sequence), so any number of chains
    start as far apart as their count allows."""
    start, scale = 0.0, 0.5
    while k:
        if k & 1:
            start += scale
        k >>= 1
        scale /= 2
    return start
