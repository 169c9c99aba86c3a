"""Where each node runs, and the subgraphs that follow from it: one vocabulary, one partitioner.

``npuflow.check`` decides each node's :class:`Device` (with its reasons) and partitions the
graph with :func:`partition`; the quantizer quantizes the accelerator's nodes, the compiler lowers
them and groups its integer ops and CPU nodes with the same :func:`partition`, and the
performance model times the subgraphs of :meth:`npuflow.check.CheckReport.placement`.  So the
subgraphs a user reads in the checker's report are the ones the compiled file runs.

The partition rule (the hb_mapper checker and the Vitis AI partitioner follow the same idea): a
unit's *level* is ``max(level of each producer + 1 when that producer runs on another device)``;
units with equal (level, device) form one subgraph.  Levels never decrease along an edge and a
cross-device edge always goes one level up, so a path that leaves a subgraph never comes back into
it, the subgraphs form a DAG, and running them in (level, device) order respects every edge.
Parallel accelerator branches at the same level share one subgraph: one accelerator call instead
of two.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Hashable, Iterable, Sequence


class Device(StrEnum):
    """Where a node runs.  A string enum, so JSON files and printed tables keep the plain
    ``"NPU"`` / ``"CPU"``."""

    NPU = "NPU"
    CPU = "CPU"


#: Device of a node that a compiler plugin runs: ``plugin:<name>`` (:mod:`npuflow.plugins`).
PLUGIN_PREFIX = "plugin:"


def plugin_device(name: str) -> str:
    """The device string of plugin ``name``'s nodes."""
    return f"{PLUGIN_PREFIX}{name}"


def is_plugin(device: str) -> bool:
    return str(device).startswith(PLUGIN_PREFIX)


def plugin_name(device: str) -> str:
    """The plugin of a :func:`plugin_device` string."""
    return str(device).removeprefix(PLUGIN_PREFIX)


@dataclass(frozen=True)
class NodePlacement:
    """Where one node runs: its device, the subgraph it belongs to (``npu_subgraph_<k>``,
    ``cpu_subgraph_<k>`` or a plugin's subgraph) and, for a fused node, the node it fuses into."""

    device: str  # a Device, or plugin_device(name)
    subgraph: str
    op_kind: str = ""
    fused_into: str | None = None


#: Node name -> its placement: what ``check`` produces and the later stages read.
PlacementMap = dict[str, NodePlacement]


def partition(devices: Sequence[Hashable], producers: Sequence[Iterable[int]]) -> list[int]:
    """Subgraph number of each unit, numbered in run order.

    ``devices[i]`` is unit ``i``'s device (any hashable key: a :class:`Device` or a plugin's
    device string); ``producers[i]`` the units whose outputs unit ``i`` reads.  Units are given
    in a topological order.  A unit that reads nothing (a weight's dequantize step for a CPU node)
    joins the level of its first readers when they all run on its device, instead of forming a
    subgraph of its own; so does a unit that reads only such units of its own device: the compiled
    model's input quantize step before an accelerator conv is one (ERFNet's stem conv, which reads
    the image beside a CPU max pool of it, was a DPU subgraph of its own in the compiled model while
    check, which sees no quantize step, joined it to the concat after the pool).
    """
    n = len(devices)
    preds = [sorted(set(p)) for p in producers]
    level = [0] * n
    for i in range(n):
        level[i] = max((level[p] + (devices[p] != devices[i]) for p in preds[i]), default=0)
    readers: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for p in preds[i]:
            readers[p].append(i)
    source: list[bool] = []
    for i in range(n):
        source.append(all(source[p] and devices[p] == devices[i] for p in preds[i]))
    # latest first: a reader's level is final before its producers move, and each moved unit stays
    # at or below every reader's level, so no path leaves a subgraph and comes back
    for i in reversed(range(n)):
        if source[i] and readers[i] and all(devices[r] == devices[i] for r in readers[i]):
            level[i] = min(level[r] for r in readers[i])
    order = {Device.CPU: 0, Device.NPU: 1}
    keys = sorted({(level[i], devices[i]) for i in range(n)}, key=lambda k: (k[0], order.get(k[1], 2), str(k[1])))
    number = {k: j for j, k in enumerate(keys)}
    return [number[(level[i], devices[i])] for i in range(n)]
