"""Placement and partition: which integer ops run on the accelerator, and the subgraphs.

Placement asks a :data:`Placement` callable per lowered op; the default one
(:func:`checker_placement_factory`) uses the checker's verdict per ONNX node.  Every node that is not lowered, or whose
op the placement refuses, stays an ONNX node on the CPU, together with the dequantize steps it
reads, so the accelerator/CPU boundaries are always integer tensors.

Subgraphs: each unit (integer op or ONNX node) gets a level, ``max(level of producers, +1 when
the producer's device differs)``; units with equal (level, device) form one subgraph.  Edges
never go to a lower level and cross devices only upwards, so the subgraphs form a DAG, run in
(level, device) order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import onnx

from ..model import node_reads
from ..targets import Target
from .program import IntOp
from .qgraph import QGraph

log = logging.getLogger(__name__)

#: ``placement(op, model, target) -> None`` (accelerator) or the reason it runs on the CPU.
Placement = Callable[[IntOp, onnx.ModelProto, Target], "str | None"]

#: Integer steps every integer engine has (input quantization, output dequantization, tables).
_ALWAYS = {"quantize", "dequantize", "requantize"}


def target_placement(op: IntOp, model: onnx.ModelProto, target: Target) -> str | None:
    """The target's operation rules: the op kind must be one the target has."""
    if op.kind in _ALWAYS or target.rule(op.kind) is not None:
        return None
    return f"target {target.name} has no {op.kind} operation"


def checker_placement_factory(model: onnx.ModelProto, target: Target) -> Placement:
    """Placement from ``npuflow.check``'s per-node verdict (with its reasons); integer ops whose
    node the checker does not report fall back to the target's operation rules."""
    from ..check import check

    report = check(model, target)
    verdict: dict[str, str | None] = {}
    for node in report.nodes:
        on_cpu = str(node.device).upper().startswith("CPU") and target.kind != "cpu"
        verdict[node.name] = ("; ".join(node.reasons) or "placed on CPU by the checker") if on_cpu else None

    def place(op: IntOp, model: onnx.ModelProto, target: Target) -> str | None:
        if op.kind in _ALWAYS:
            return None
        if op.name in verdict:
            return verdict[op.name]
        return target_placement(op, model, target)

    return place


@dataclass
class Unit:
    """One schedulable piece: an integer op (accelerator) or an ONNX node (CPU)."""

    position: int
    device: str  # "npu" | "cpu" | "plugin:<name>"
    inputs: list[str]
    outputs: list[str]
    op: IntOp | None = None
    node: onnx.NodeProto | None = None
    level: int = 0


@dataclass
class Partition:
    units: list[Unit]
    subgraphs: list[list[Unit]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plugin_units(g: QGraph, owner: dict[str, str]) -> dict[str, str]:
    """``{node: plugin}`` for the nodes plugins claimed plus the quantize/dequantize steps that
    come with them: a dequantize step whose every reader is the plugin's, and a quantize step of
    a tensor the plugin writes.  So a plugin's subgraph reads and writes integer tensors, as an
    accelerator subgraph does."""
    taken = dict(owner)
    for n in g.graph.node:
        if g.is_dequantize(n):
            readers = {taken.get(c.name) for c in g.consumer_nodes(n.output[0])}
            if len(readers) == 1 and None not in readers and not g.is_graph_output(n.output[0]):
                taken[n.name] = readers.pop()
    for n in g.graph.node:
        if g.quantize_mode(n) is not None:
            src = g.producer_node(n.input[0])
            if src is not None and src.name in owner:
                taken[n.name] = owner[src.name]
    return taken


def build_units(g: QGraph, ops: list[IntOp], taken: dict[str, str] | None = None) -> list[Unit]:
    """Integer ops, the nodes plugins took (``taken``: node -> plugin) and every other ONNX
    node, in a topological order."""
    taken = taken or {}
    index = {n.name: i for i, n in enumerate(g.graph.node)}
    covered = {name for op in ops for name in op.nodes}
    units = [Unit(min(index[n] for n in op.nodes), "npu", list(op.inputs), list(op.outputs), op=op) for op in ops]
    for n in g.graph.node:
        if n.name in taken:
            units.append(Unit(index[n.name], f"plugin:{taken[n.name]}", [i for i in node_reads(n) if i not in g.inits],
                              [o for o in n.output if o], node=n))
    covered |= set(taken)
    npu_reads = {name for op in ops for name in op.reads}
    cpu_nodes = [n for n in g.graph.node if n.name not in covered]
    cpu_consumed = {i for n in cpu_nodes if not g.is_dequantize(n) for i in node_reads(n)}
    for n in cpu_nodes:
        if g.is_dequantize(n) and n.name in npu_reads and n.output[0] not in cpu_consumed \
                and not g.is_graph_output(n.output[0]):
            continue  # read directly as integers by the accelerator
        # a control-flow node's inputs include what its branches/body read from the outer scope:
        # those must be computed before it and carried into its CPU subgraph
        units.append(Unit(index[n.name], "cpu", [i for i in node_reads(n) if i not in g.inits],
                          [o for o in n.output if o], node=n))
    units.sort(key=lambda u: u.position)
    return units


def partition(units: list[Unit]) -> list[list[Unit]]:
    producer: dict[str, Unit] = {}
    for u in units:
        for o in u.outputs:
            producer[o] = u
    for u in units:
        level = 0
        for i in u.inputs:
            p = producer.get(i)
            if p is not None:
                level = max(level, p.level + (p.device != u.device))
        u.level = level
    # units that read only constants (a weight's dequantize step for a CPU node) join the
    # subgraph of their first consumer instead of forming a subgraph of their own
    consumers: dict[str, list[Unit]] = {}
    for u in units:
        for i in u.inputs:
            consumers.setdefault(i, []).append(u)
    for u in units:
        if not u.inputs:
            users = [c for o in u.outputs for c in consumers.get(o, [])]
            if users and all(c.device == u.device for c in users):
                u.level = min(c.level for c in users)
    groups: dict[tuple[int, str], list[Unit]] = {}
    for u in units:
        groups.setdefault((u.level, u.device), []).append(u)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1] != "cpu"))]
