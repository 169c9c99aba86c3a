"""An integer program's ops, parsed from the ``.npuf``'s manifest only when something reads them.

Why: a runtime ``Session`` whose fused plans are stored (``runtime/fused_cache.py``) never reads
its programs' ops at load; parsing them anyway makes one small Python object per op field (PP-OCR
cls on B4096: 3,800 dicts and lists), and the pages CPython's allocator takes for them stay with
the process even once they are freed: that parse was the largest part of npuflow's load above
ONNX Runtime's in peak memory (issue 19; ``docs/runtime-measurements.md``, "Peak memory").  So a
``Session`` reads the manifest with each integer program's ops left out (:func:`hide_op`) where the
manifest's verdict is stored already (its validation needs every op), and puts a :class:`LazyOps` in
their place: the first time a program's ops are read (dump mode, ``run_op``, a fused plan built or
merged with its neighbours, ``info``) its list alone is parsed from the manifest's text.
:attr:`LazyOps.identity` names the ops by the manifest's verified SHA-256 and their place in it,
which a stored fused plan is keyed on instead of the ops' contents.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Callable, Iterator

#: What :func:`hide_op` leaves in place of an op while the manifest is read.
HIDDEN = object()


def hide_op(d: dict) -> object:
    """``json.loads``'s ``object_hook``: an integer op's dict (``op``, ``inputs``, ``outputs``,
    ``attrs``) becomes :data:`HIDDEN`, freed as soon as it is made; every other dict is kept."""
    return HIDDEN if "op" in d and "attrs" in d and "inputs" in d and "outputs" in d else d


def install(programs: list[tuple[tuple, dict]], read: Callable[[int, int, tuple], list[dict]], digest: str) -> bool:
    """Put a :class:`LazyOps` in place of each integer program's ops (``programs``: each program's
    path in the manifest and the program): hidden ops read when first asked by ``read(k, count,
    path)`` (the ``k``-th hidden list, in the manifest's order, of ``count`` ops, at ``path``), ops
    parsed already as they are (a first load, which validated them: its stored plan is named as the
    later loads' is); whether every hidden op was in such a place (else the caller parses the
    manifest whole)."""
    k = 0
    for path, program in programs:
        for j, sg in enumerate(program.get("subgraphs", [])):
            ops = sg.get("ops") if type(sg) is dict else None
            if sg.get("engine") != "integer" or type(ops) is not list:
                continue
            where = (*path, "subgraphs", j, "ops")
            if ops and all(op is HIDDEN for op in ops):
                sg["ops"] = LazyOps(functools.partial(read, k, len(ops), where), where, digest)
                k += 1
            elif not any(op is HIDDEN for op in ops):
                sg["ops"] = LazyOps(list, where, digest, ops)
    return not _holds_hidden([p for _, p in programs])


def _holds_hidden(roots: list) -> bool:
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is HIDDEN:
            return True
        if type(node) is dict:
            stack.extend(node.values())
        elif type(node) is list:
            stack.extend(node)
    return False


class LazyOps(Sequence):
    """A program's ops, read (``read()``) on first use; a list everywhere it is read (indexing,
    iteration, equality, ``json`` through ``artifact``'s writer, copies and pickles as the list)."""

    __slots__ = ("_read", "_ops", "identity")

    def __init__(self, read: Callable[[], list[dict]], path: tuple, digest: str, ops: list[dict] | None = None) -> None:
        self._read, self._ops = read, ops
        #: the manifest's SHA-256 and the ops' place in it: equal only for the same ops of the same manifest
        self.identity = f"{digest}:{'/'.join(map(str, path))}"

    @property
    def ops(self) -> list[dict]:
        """The ops as a list (parsed now, where nothing read them before)."""
        if self._ops is None:
            self._ops = self._read()
        return self._ops

    @property
    def parsed(self) -> bool:
        """Whether the ops have been read (tests, measurements)."""
        return self._ops is not None

    def __len__(self) -> int:
        return len(self.ops)

    def __getitem__(self, k):  # type: ignore[override]
        return self.ops[k]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.ops)

    def __eq__(self, other: object) -> bool:
        return self.ops == (other.ops if isinstance(other, LazyOps) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.ops)

    def __reduce__(self) -> tuple:
        return list, (self.ops,)

    def __copy__(self) -> list[dict]:
        return list(self.ops)

    def __deepcopy__(self, memo: dict) -> list[dict]:
        import copy

        return copy.deepcopy(self.ops, memo)
