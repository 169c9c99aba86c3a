"""From per-node devices to NPU subgraphs.

Rules (hb_mapper checker and the Vitis AI partitioner agree on them):

* contiguous NPU work forms one subgraph; a CPU node in the middle splits the NPU part before it
  from the part after it (a subgraph never has a path that leaves it and comes back, so each can
  run as one accelerator call);
* followers (Q/DQ, Identity, shape arithmetic) take the device and subgraph of the node they
  belong to and never split anything.

A node's *level* counts the CPU->NPU transitions on the longest path reaching it; NPU nodes joined
by a data edge at the same level share a subgraph.  Levels never decrease along an edge, so a
path out of a subgraph through the CPU cannot come back into it.
"""

from __future__ import annotations

from ..graph import GraphView
from .report import CPU, NPU


class UnionFind:
    """Disjoint sets over node indices (smallest index is the root, so ids follow graph order)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def real_producer(view: GraphView, transparent: list[bool], tensor: str) -> int | None:
    """The nearest non-transparent node that computes ``tensor``."""
    for _ in range(64):
        p = view.producer.get(tensor)
        if p is None or not transparent[p]:
            return p
        ins = view.data_inputs(p)
        if not ins:
            return None
        tensor = ins[0]
    return None


def real_consumers(view: GraphView, transparent: list[bool], i: int) -> list[int]:
    """The non-transparent nodes that read node ``i``'s outputs, looking through followers."""
    out, stack, seen = [], [o for o in view.nodes[i].output if o], set()
    while stack:
        t = stack.pop()
        for c in view.data_consumers(t):
            if c in seen:
                continue
            seen.add(c)
            if transparent[c]:
                stack.extend(o for o in view.nodes[c].output if o)
            else:
                out.append(c)
    return out


def partition(view: GraphView, device: list[str], transparent: list[bool]) -> list[int | None]:
    """Subgraph id per node (``None`` for CPU and transparent nodes), numbered in graph order."""
    n = len(view.nodes)
    level = [0] * n
    producers: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        if transparent[i]:
            continue
        preds = {p for t in view.data_inputs(i) if (p := real_producer(view, transparent, t)) is not None}
        producers[i] = sorted(preds)
        lv = 0
        for p in preds:
            lv = max(lv, level[p] + (1 if device[p] == CPU and device[i] == NPU else 0))
        level[i] = lv
    uf = UnionFind()
    for i in range(n):
        if transparent[i] or device[i] != NPU:
            continue
        uf.find(i)
        for p in producers[i]:
            if device[p] == NPU and level[p] == level[i]:
                uf.union(p, i)
    ids: dict[int, int] = {}
    out: list[int | None] = [None] * n
    for i in range(n):
        if transparent[i] or device[i] != NPU:
            continue
        root = uf.find(i)
        if root not in ids:
            ids[root] = len(ids)
        out[i] = ids[root]
    return out
