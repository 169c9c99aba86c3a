"""From per-node devices to subgraphs, on the checker's graph view.

The rule is :func:`npuflow.placement.partition`'s, the one the compiler uses: a subgraph never has
a path that leaves it and comes back, so each runs as one accelerator call (or one ONNX Runtime
run).  Followers (Q/DQ, Identity, shape arithmetic) take the device and subgraph of the node they
belong to and never split anything: the partition sees the nodes that compute, joined through them.
"""

from __future__ import annotations

from .. import placement
from ..graph import GraphView


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
    """Subgraph number per node, in run order over both devices (``None`` for transparent
    nodes): :func:`npuflow.placement.partition` over the nodes that compute, joined through the
    followers between them."""
    units = [i for i in range(len(view.nodes)) if not transparent[i]]
    pos = {i: k for k, i in enumerate(units)}
    producers = [[pos[p] for t in view.data_inputs(i) if (p := real_producer(view, transparent, t)) is not None]
                 for i in units]
    groups = placement.partition([device[i] for i in units], producers)
    out: list[int | None] = [None] * len(view.nodes)
    for k, i in enumerate(units):
        out[i] = groups[k]
    return out
