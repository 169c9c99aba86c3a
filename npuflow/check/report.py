"""The checker's result: per-node placement and the NPU subgraphs, as plain data.

This is a stable API: the compiler, quantizer and performance model read it.  ``device`` is a
:class:`npuflow.placement.Device` (``"NPU"`` or ``"CPU"`` in JSON); printed tables show the target's
label (DPU, BPU) via :meth:`CheckReport.device_name`.  :meth:`CheckReport.placement` is the
placement map the later stages consume.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from ..placement import Device, NodePlacement, PlacementMap
from ..targets.spec import Target

NPU = Device.NPU
CPU = Device.CPU


@dataclass
class NodeReport:
    name: str
    op_type: str
    device: Device
    subgraph: int | None  # its NPU subgraph (None on the CPU)
    kernel_type: str
    op_kind: str
    fused_into: str | None
    reasons: list[str]
    hint: str
    inputs: list[str]
    outputs: list[str]
    input_nodes: list[str]
    output_nodes: list[str]
    output_shape: list[int] | None
    attributes: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)  # layer parameters the limits were judged on
    messages: list[str] = field(default_factory=list)  # extra notes (e.g. layout permutes)
    module: str | None = None  # PyTorch front end: module path that created the node
    source_range: list[str] = field(default_factory=list)  # PyTorch front end: user stack, innermost first
    cpu_subgraph: int | None = None  # the CPU part it runs in (None on the NPU)


@dataclass
class Subgraph:
    id: int
    device: str
    nodes: list[str]
    inputs: list[str]
    outputs: list[str]


@dataclass
class CheckReport:
    target: Target
    model: onnx.ModelProto
    nodes: list[NodeReport]
    subgraphs: list[Subgraph]
    graph_name: str = ""

    def __repr__(self) -> str:
        """A one-line summary: the generated dataclass repr printed the model and every node's
        report (15 KB for the MNIST CNN) in a notebook cell."""
        s = self.summary
        return (f"CheckReport(target={s['target']!r}, graph={self.graph_name!r}, nodes={s['nodes']}, "
                f"npu_nodes={s['npu_nodes']}, cpu_nodes={s['cpu_nodes']}, npu_subgraphs={s['npu_subgraphs']}, "
                f"cpu_op_types={s['cpu_op_types']})")

    def node(self, name: str) -> NodeReport:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def device_name(self, node: NodeReport) -> str:
        """What the ON column prints: the target's label for NPU nodes (DPU, BPU), else CPU."""
        return self.target.device_label if node.device == NPU else CPU

    def placement(self) -> PlacementMap:
        """Each node's device and subgraph (``npu_subgraph_<k>`` / ``cpu_subgraph_<k>``, as the
        partition numbered them), the map the quantizer, compiler and performance model read."""
        out: PlacementMap = {}
        for n in self.nodes:
            if n.device == NPU:
                sub = f"npu_subgraph_{n.subgraph}"
            else:
                sub = f"cpu_subgraph_{n.cpu_subgraph}" if n.cpu_subgraph is not None else f"cpu_{n.name}"
            out[n.name] = NodePlacement(Device(n.device), sub, n.op_kind, n.fused_into or None)
        return out

    @property
    def cpu_nodes(self) -> list[NodeReport]:
        return [n for n in self.nodes if n.device == CPU]

    @property
    def summary(self) -> dict[str, Any]:
        cpu_types: dict[str, int] = {}
        for n in self.cpu_nodes:
            cpu_types[n.op_type] = cpu_types.get(n.op_type, 0) + 1
        npu = sum(1 for n in self.nodes if n.device == NPU)
        return {
            "target": self.target.name,
            "nodes": len(self.nodes),
            "npu_nodes": npu,
            "cpu_nodes": len(self.nodes) - npu,
            "fused_nodes": sum(1 for n in self.nodes if n.fused_into),
            "npu_subgraphs": len(self.subgraphs),
            "cpu_op_types": dict(sorted(cpu_types.items())),
        }

    def to_dict(self) -> dict[str, Any]:
        t = self.target
        return {
            "target": {"name": t.name, "fingerprint": t.fingerprint, "family": t.family,
                       "device_label": t.device_label, "description": t.description},
            "graph_name": self.graph_name,
            "summary": self.summary,
            "subgraphs": [asdict(s) for s in self.subgraphs],
            "nodes": [asdict(n) for n in self.nodes],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)
