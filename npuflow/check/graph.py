"""A read-only view of an ONNX graph for the checker: producers, consumers, constants, shapes.

Quantize/dequantize nodes are *transparent* here: a QDQ model (what the quantizer writes and
the compiler checks again) must place the same as the float model it came from.  So
:meth:`GraphView.data_producer` and :meth:`GraphView.data_consumers` step through Q/DQ chains,
and a tensor that is an initializer seen through ``DequantizeLinear`` counts as a constant
weight, exactly as the float initializer did.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from ..model import node_reads, outer_reads, tensor_shapes
from ..operators import QDQ_OPS, op_def

NPUFLOW_DOMAIN = "ai.npuflow"


def is_qdq(node: onnx.NodeProto) -> bool:
    """Q/DQ nodes: standard ones and npuflow's rounding-mode quantize functions (``npuflow.qdq``)."""
    if node.domain in ("", "ai.onnx", "com.microsoft") and node.op_type in QDQ_OPS:
        return True
    return node.domain == NPUFLOW_DOMAIN and node.op_type.startswith(("Quantize_", "Dequantize_"))


class GraphView:
    """Index of a (normalised, topologically sorted) model's graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
        self.shapes: dict[str, list[int]] = tensor_shapes(model)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in node_reads(n):  # what an If/Loop body reads from this graph is read by its node
                self.consumers.setdefault(t, []).append(i)
        self.graph_outputs = {o.name for o in model.graph.output}
        self.qdq = [is_qdq(n) for n in self.nodes]
        self._values: dict[str, np.ndarray] = {}

    # --- constants -----------------------------------------------------------------------
    def is_const(self, tensor: str) -> bool:
        """An initializer, or an initializer seen through Q/DQ nodes (a quantized weight)."""
        seen = 0
        while tensor not in self.inits:
            p = self.producer.get(tensor)
            if p is None or not self.qdq[p] or seen > 8:
                return False
            tensor = self.nodes[p].input[0]
            seen += 1
        return True

    def value(self, tensor: str) -> np.ndarray | None:
        """Value of a constant (through Q/DQ: the stored integers, which have the right shape)."""
        if not tensor:
            return None
        if tensor in self._values:
            return self._values[tensor]
        t = tensor
        for _ in range(8):
            if t in self.inits:
                arr = numpy_helper.to_array(self.inits[t])
                self._values[tensor] = arr
                return arr
            p = self.producer.get(t)
            if p is None or not self.qdq[p]:
                return None
            t = self.nodes[p].input[0]
        return None

    def shape(self, tensor: str) -> list[int] | None:
        if tensor in self.shapes:
            return self.shapes[tensor]
        arr = self.value(tensor)
        return list(arr.shape) if arr is not None else None

    # --- data flow through Q/DQ -----------------------------------------------------------
    def reads(self, i: int) -> list[str]:
        """Every tensor node ``i`` reads: its inputs and, for If/Loop/Scan, what its bodies read
        from the outer scope (a branch computing on a feature map is data flow, not shape arithmetic)."""
        return node_reads(self.nodes[i])

    def data_inputs(self, i: int) -> list[str]:
        """Tensors node ``i`` reads that carry feature-map data (not shapes, not weights), the
        outer-scope reads of its subgraphs included."""
        n = self.nodes[i]
        # the registry's parameter inputs (shapes, indices, bounds) never join subgraphs
        names = [n.input[k] for k in op_def(n.op_type, n.domain).data_inputs(n)]
        names += outer_reads(n)
        return [t for t in dict.fromkeys(names) if t and not self.is_const(t)]

    def data_source(self, tensor: str) -> str:
        """The tensor before any Q/DQ chain (``tensor`` itself when no Q/DQ node makes it)."""
        for _ in range(16):
            p = self.producer.get(tensor)
            if p is None or not self.qdq[p]:
                return tensor
            tensor = self.nodes[p].input[0]
        return tensor

    def data_producer(self, tensor: str) -> int | None:
        """The node that computes ``tensor``, looking through Q/DQ nodes."""
        return self.producer.get(self.data_source(tensor))

    def data_consumers(self, tensor: str) -> list[int]:
        """Nodes that use ``tensor``, looking through Q/DQ nodes."""
        out: list[int] = []
        stack = [tensor]
        while stack:
            t = stack.pop()
            for c in self.consumers.get(t, []):
                if self.qdq[c]:
                    stack.extend(o for o in self.nodes[c].output if o)
                elif c not in out:
                    out.append(c)
        return out

    def reaches_output(self, tensor: str) -> bool:
        """Whether ``tensor`` (or a Q/DQ copy of it) is a graph output."""
        stack = [tensor]
        while stack:
            t = stack.pop()
            if t in self.graph_outputs:
                return True
            stack.extend(o for c in self.consumers.get(t, []) if self.qdq[c] for o in self.nodes[c].output)
        return False

    @cached_property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]
