"""Which nodes the quantizer may quantize on a target: the accelerator's nodes only.

On Vitis AI and Horizon the nodes the compiler leaves on the CPU run in float, with quantize and
dequantize steps only where tensors cross between the accelerator and the CPU.  Quantizing them
anyway (LayerNorm pieces, Softmax, Sigmoid on a DPU) adds rounding the deployed program never
does and costs accuracy for nothing.  So on ``kind: npu`` targets the quantizer asks the checker
(:func:`npuflow.check`) where each node of the optimised float model runs, and the plan
(:mod:`.plan`) quantizes only the accelerator's nodes.  A ``kind: cpu`` target (``cpu-int8``)
runs integer kernels on the CPU itself: there every quantizable node is quantized.

Nodes are matched by output tensor: legalisation (:mod:`.legalize`) keeps node output names and
only adds internal tensors (``<name>/add``, ``<name>/clip``, ``<name>/hsig``) inside chains whose
last node writes the original tensor, so an added node takes the placement of that last node.
"""

from __future__ import annotations

import onnx

from ..check.report import CheckReport
from ..placement import Device
from ..graph import GraphView
from ..targets import Target
from .plan import node_key


def accelerator_nodes(placement: CheckReport, model: onnx.ModelProto, target: Target) -> set[str] | None:
    """Keys (:func:`.plan.node_key`) of the nodes of legalised ``model`` that run on the
    accelerator, or ``None`` when every node may be quantized (a CPU target)."""
    if target.kind != "npu":
        return None
    device = {o: n.device for n in placement.nodes for o in n.outputs if o}
    idx = GraphView(model.graph)
    on_npu: set[str] = set()
    for node in model.graph.node:
        if _device(node, device, idx) == Device.NPU:
            on_npu.add(node_key(node))
    return on_npu


def _device(node: onnx.NodeProto, device: dict[str, str], idx: GraphView) -> str | None:
    """The checker's device of ``node``, following a legalisation chain to its original output."""
    seen = 0
    while node is not None and seen < 8:
        for o in node.output:
            if o in device:
                return device[o]
        node = idx.only_consumer(node.output[0]) if node.output else None
        seen += 1
    return None
