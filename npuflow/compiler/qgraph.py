"""Reading a quantized ONNX model (``docs/quantized-model-format.md``) as integer tensors.

The compiler does not trust op types alone: it finds the quantize steps (``QuantizeLinear`` or
the ``ai.npuflow:Quantize_<mode>_<dtype>`` functions of :mod:`npuflow.qdq`) and the
``DequantizeLinear`` steps, and describes every integer tensor by its dtype, scale, zero point
and the tie rule of the step that produced it.  Lowering then works on these descriptions.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx

from ..check.quant_facts import QParams, QuantFacts, integer_type, step_params, target_runs
from ..graph import GraphView, is_dequantize, quantize_mode
from ..numerics import RoundMode
from ..targets import Target


class QGraph(GraphView):
    """A quantized model's graph (:class:`npuflow.graph.GraphView`) with the compiler's Q/DQ
    questions: which nodes are quantize steps and with which tie rule, the params of each
    integer tensor, the integer tensor behind a dequantize step."""

    def __init__(self, model: onnx.ModelProto, target: Target | None) -> None:
        super().__init__(model)
        #: the target whose ops :attr:`facts` asks about (``None``: the graph alone, for tools that
        #: only read Q/DQ parameters).  Required, so no index of the compile forgets it: every
        #: ``QGraph`` of ``compile`` and its legalisation is built with the compile's target, and a
        #: grid op the target runs on the CPU gets no quantize step and is not lowered, for check's
        #: reason (``QuantFacts.runs``; before, ``compile``'s lowering index had none: ``lowering_limit``
        #: walked a grid step through bernoulli2's Transpose and passed the Reshape and Gemm after it,
        #: which the lowering then refused for another reason than check's)
        self.target = target

    # --- kinds of nodes -------------------------------------------------------------------

    #: ``(round mode, dtype or None)`` when a node is a quantize step, else ``None``
    quantize_mode = staticmethod(quantize_mode)
    is_dequantize = staticmethod(is_dequantize)

    @functools.cached_property
    def facts(self) -> QuantFacts:
        """This index as the graph questions the checker asks too (:class:`~npuflow.check.quant_facts.QuantFacts`),
        so both decide from the same :func:`~npuflow.check.lowerable.lowering_limit` and fuse the same chains."""
        return QuantFacts(self, target_runs(self, self.target) if self.target is not None else None)

    def scalar(self, name: str) -> float | None:
        """A one-element float constant's value (a chain's bound or factor), else ``None``."""
        c = self.const(name)
        if c is None or c.size != 1 or c.dtype.kind != "f":
            return None
        return float(np.asarray(c, np.float32).reshape(-1)[0])

    # --- quant params ---------------------------------------------------------------------

    def _params(self, node: onnx.NodeProto, round_mode: RoundMode, dtype: str | None) -> QParams | None:
        return step_params(self, node, round_mode, dtype)

    def quantize_params(self, node: onnx.NodeProto) -> QParams | None:
        mode = self.quantize_mode(node)
        if mode is None:
            return None
        return self._params(node, mode[0], mode[1])

    def dequantize_params(self, node: onnx.NodeProto) -> QParams | None:
        """Params of a DQ step; the round mode is that of the Q step producing its input."""
        src = self.producer_node(node.input[0])
        mode = RoundMode.HALF_EVEN
        if src is not None and (qm := self.quantize_mode(src)) is not None:
            mode = qm[0]
        p = self._params(node, mode, None)
        if p is None:
            return None
        dtype = self._int_dtype(node.input[0]) or p.dtype
        if not integer_type(dtype):
            return None
        return QParams(dtype, p.scale, p.zero_point, p.axis, p.round_mode)

    def _int_dtype(self, name: str) -> str | None:
        c = self.const(name)
        if c is not None:
            return str(c.dtype)
        et = self.elem_types.get(name)
        return str(onnx.helper.tensor_dtype_to_np_dtype(et)) if et else None

    def dq_source(self, float_tensor: str) -> tuple[str, QParams, onnx.NodeProto] | None:
        """``(integer tensor, params, DQ node)`` when ``float_tensor`` is a dequantize output."""
        node = self.producer_node(float_tensor)
        if node is None or not self.is_dequantize(node):
            return None
        p = self.dequantize_params(node)
        if p is None:
            return None
        return node.input[0], p, node

    def single_quantize_consumer(self, float_tensor: str) -> tuple[onnx.NodeProto, QParams] | None:
        """The one quantize step reading ``float_tensor`` when nothing else reads it."""
        if self.is_graph_output(float_tensor):
            return None
        cons = self.consumer_nodes(float_tensor)
        if len(cons) != 1:
            return None
        p = self.quantize_params(cons[0])
        return (cons[0], p) if p is not None else None

