"""Placement and partition of a quantized model: which integer ops run on the accelerator, and the subgraphs.

Placement asks a :data:`PlacementRule` per lowered op; the default one
(:func:`checker_placement_factory`) reads the checker's placement map
(:meth:`npuflow.check.CheckReport.placement`).  Every node that is not lowered, or whose op the
rule refuses, stays an ONNX node on the CPU, together with the dequantize steps it reads, so the
accelerator/CPU boundaries are always integer tensors.

Subgraphs: the units (integer ops, plugin nodes, ONNX nodes) are partitioned by
:func:`npuflow.placement.partition`, the rule the checker's report uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import onnx

from .. import placement
from ..placement import Device, plugin_device
from ..targets import Target
from .program import IntOp
from .qgraph import QGraph

log = logging.getLogger(__name__)

#: ``rule(op, model, target) -> None`` (accelerator) or the reason it runs on the CPU.
PlacementRule = Callable[[IntOp, onnx.ModelProto, Target], "str | None"]

#: Integer steps every integer engine has (input quantization, output dequantization, tables).
_ALWAYS = {"quantize", "dequantize", "requantize"}


def target_placement(op: IntOp, model: onnx.ModelProto, target: Target) -> str | None:
    """The target's operation rules: the op kind must be one the target has."""
    if op.kind in _ALWAYS or target.rule(op.kind) is not None:
        return None
    return f"target {target.name} has no {op.kind} operation"


def checker_verdicts(model: onnx.ModelProto, target: Target) -> dict[str, str | None]:
    """``{node: reason}`` from ``npuflow.check``'s placement map: the checker's reasons for a node it
    puts on the CPU (its target limits first), None for one it places on the accelerator.  A
    ``kind: cpu`` target runs its integer ops on the CPU itself: there every node is None."""
    from ..check import check

    report = check(model, target)
    placement = report.placement()
    verdict: dict[str, str | None] = {}
    for node in report.nodes:
        on_cpu = placement[node.name].device == Device.CPU and target.kind != "cpu"
        verdict[node.name] = ("; ".join(node.reasons) or "placed on CPU by the checker") if on_cpu else None
    return verdict


def checker_placement_factory(model: onnx.ModelProto, target: Target,
                              verdict: dict[str, str | None] | None = None) -> PlacementRule:
    """The rule from the checker's verdicts (:func:`checker_verdicts`, given or computed); integer
    ops whose node the checker does not report fall back to the target's operation rules."""
    verdict = checker_verdicts(model, target) if verdict is None else verdict

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
    device: str  # a Device, or placement.plugin_device(name)
    inputs: list[str]
    outputs: list[str]
    op: IntOp | None = None
    node: onnx.NodeProto | None = None


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
    covered = {name for op in ops for name in op.nodes}
    units = [Unit(min(g.position_of(n) for n in op.nodes), Device.NPU, list(op.inputs), list(op.outputs), op=op)
             for op in ops]
    for i, n in enumerate(g.nodes):
        if n.name in taken:
            units.append(Unit(i, plugin_device(taken[n.name]), [t for t in g.reads(i) if t not in g.inits],
                              [o for o in n.output if o], node=n))
    covered |= set(taken)
    npu_reads = {name for op in ops for name in op.reads}
    cpu_nodes = [i for i, n in enumerate(g.nodes) if n.name not in covered]
    cpu_consumed = {t for i in cpu_nodes if not g.is_dequantize(g.nodes[i]) for t in g.reads(i)}
    for i in cpu_nodes:
        n = g.nodes[i]
        if g.is_dequantize(n) and n.name in npu_reads and n.output[0] not in cpu_consumed \
                and not g.is_graph_output(n.output[0]):
            continue  # read directly as integers by the accelerator
        # a control-flow node's inputs include what its branches/body read from the outer scope:
        # those must be computed before it and carried into its CPU subgraph
        units.append(Unit(i, Device.CPU, [t for t in g.reads(i) if t not in g.inits],
                          [o for o in n.output if o], node=n))
    units.sort(key=lambda u: u.position)
    return units


def partition(units: list[Unit]) -> list[list[Unit]]:
    """The units grouped into subgraphs, in run order (:func:`npuflow.placement.partition`)."""
    producer: dict[str, int] = {}
    for k, u in enumerate(units):
        for o in u.outputs:
            producer[o] = k
    numbers = placement.partition([u.device for u in units],
                                  [[producer[i] for i in u.inputs if i in producer] for u in units])
    groups: list[list[Unit]] = [[] for _ in range(max(numbers, default=-1) + 1)]
    for u, k in zip(units, numbers):
        groups[k].append(u)
    return groups
