"""Activation memory plan of one accelerator subgraph: offsets in one arena, with reuse.

A tensor made and consumed inside the subgraph lives from the op that writes it to the last op
that reads it; tensors whose lifetimes do not overlap share bytes.  Placement is greedy
best-fit by size (largest first), which is what deployment compilers do for DDR feature maps
(Vitis AI ``XCOM_DDRALLOC_*``).  Subgraph inputs and outputs are not in the arena: they belong to
the caller.  The arena size is the subgraph's peak activation memory.
"""

from __future__ import annotations

import numpy as np

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan(ops: list[dict], tensors: dict[str, dict], boundary: set[str]) -> dict:
    """``{"arena_bytes", "total_bytes", "buffers": {name: {"offset", "nbytes"}}}``.

    ``ops`` are manifest ops in execution order, ``tensors`` name -> {"dtype", "shape"},
    ``boundary`` the subgraph's inputs and outputs (not planned).
    """
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for k, op in enumerate(ops):
        for o in op["outputs"]:
            first.setdefault(o, k)
            last[o] = max(last.get(o, k), k)
        for i in op["inputs"]:
            if i in first:
                last[i] = max(last[i], k)
    sizes = {}
    for name in first:
        if name in boundary:
            continue
        info = tensors[name]
        sizes[name] = _align(int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    buffers = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], first[n], n)):
        size, a, b = sizes[name], first[name], last[name]
        busy = sorted((off, sz) for off, sz, f, l in placed if not (l < a or b < f))
        offset, best = None, None
        cursor = 0
        for off, sz in busy:
            gap = off - cursor
            if gap >= size and (best is None or gap < best):
                offset, best = cursor, gap
            cursor = max(cursor, off + sz)
        if offset is None:
            offset = cursor
        placed.append((offset, size, a, b))
        buffers[name] = {"offset": offset, "nbytes": size}
    arena = max((off + sz for off, sz, _, _ in placed), default=0)
    return {"arena_bytes": int(arena), "total_bytes": int(sum(sizes.values())),
            "buffers": {k: buffers[k] for k in sorted(buffers)}}
