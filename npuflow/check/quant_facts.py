"""The graph facts check and compile both read a quantized model by (``QuantFacts``, ``QParams``).

One reading of a QDQ graph for both sides: which tensors are quantize/dequantize steps and with
what parameters (:func:`step_params`), which constants a quantize step of a float weight folds
into (:func:`folded_weight`), whether the model is quantized dynamically, and whether the target
has an op at all (:func:`target_runs`).  :mod:`.lowerable` asks its lowering questions through
these; the compiler's ``QGraph`` builds the same :class:`QuantFacts` on its own index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx

from .. import numerics
from ..graph import GraphView, is_dequantize, quantize_mode
from ..numerics import RoundMode, fix_pos_of
from ..passes.gelu import table_ops
from ..targets import Target
from .fusion import pattern_view
from ..node_kinds import classify


def dynamic_quantization(nodes: Iterable[onnx.NodeProto]) -> str | None:
    """Why a dynamically quantized model runs nowhere on an accelerator (``None``: it is not one).

    ``DynamicQuantizeLinear`` (and ONNX Runtime's fused ``DynamicQuantizeMatMul``/``LSTM``)
    computes an activation's scale and zero point from each input at run time, and
    ``MatMulInteger``/``ConvInteger`` multiply what it writes; an integer program needs those
    parameters when it is compiled.  ``compile`` refuses such a model with this reason
    (``NPF_COMPILE_DYNAMIC_QUANTIZATION``) and check keeps every node on the CPU with it; before
    (2026-12-05), compile said the model had no quantize steps and check placed 8-18 of its nodes
    on cpu-int8's accelerator."""
    nodes = list(nodes)
    if not any(n.op_type.startswith("DynamicQuantize") for n in nodes):
        return None
    found = Counter(n.op_type for n in nodes if n.op_type.startswith("DynamicQuantize") or n.op_type.endswith("Integer"))
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(found.items()))
    return (f"the model is quantized dynamically ({ops}, as ONNX Runtime's quantize_dynamic writes it): its "
            f"activation scales are computed at run time from each input, which no integer program runs; "
            f"quantize the float model statically (npuflow quantize FLOAT.onnx --target TARGET)")


@dataclass(frozen=True)
class QParams:
    """How one integer tensor maps to reals: ``(q - zero_point) * scale``."""

    dtype: str  # int8 | uint8 | int16 | uint16 | int32
    scale: np.ndarray  # float32, 0-D or 1-D
    zero_point: np.ndarray  # int64, same shape as scale
    axis: int | None = None
    round_mode: RoundMode = RoundMode.HALF_EVEN

    @property
    def bits(self) -> int:
        return np.dtype(self.dtype).itemsize * 8

    @property
    def signed(self) -> bool:
        return np.dtype(self.dtype).kind == "i"

    @property
    def per_tensor(self) -> bool:
        return self.scale.ndim == 0 or self.scale.size == 1

    @property
    def fix_pos(self) -> np.ndarray | None:
        """Power-of-two position(s), or ``None`` when a scale is not a power of two."""
        return fix_pos_of(self.scale)

    def scalar_scale(self) -> float:
        return float(self.scale.reshape(-1)[0])

    def scalar_zp(self) -> int:
        return int(self.zero_point.reshape(-1)[0])

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype,
            "scale": self.scale.astype(np.float64).tolist(),
            "zero_point": self.zero_point.astype(np.int64).tolist(),
            "axis": self.axis,
            "round_mode": self.round_mode.value,
        }


def integer_type(dtype: str) -> bool:
    """Whether a Q/DQ step's type is one the integer programs compute in (int8..uint16, int32).

    float8 and int4 steps are not: their nodes stay in ONNX (CPU subgraphs), where ONNX Runtime
    runs them with their own semantics, instead of being lowered as if they were 8-bit integers
    (numpy stores both in one byte)."""
    return dtype in ("int8", "uint8", "int16", "uint16", "int32")


def step_params(view: GraphView, node: onnx.NodeProto, round_mode: RoundMode, dtype: str | None) -> QParams | None:
    """The parameters of the Q/DQ step ``node`` (constant scale and zero point of an integer type the
    programs compute in), else ``None``; ``dtype``: the step's own type when its op names one.  The
    compiler's ``QGraph`` reads every step through this, and :func:`folded_weight` too."""
    scale = view.const(node.input[1])
    if scale is None:
        return None
    zp_name = node.input[2] if len(node.input) > 2 else ""
    zp = view.const(zp_name)
    if zp_name and zp is None:
        return None
    if dtype is None:
        dtype = str(zp.dtype) if zp is not None else "uint8"
    if not integer_type(dtype):
        return None
    zp_arr = np.zeros(scale.shape, np.int64) if zp is None else zp.astype(np.int64)
    axis = None
    if scale.ndim == 1 and scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return QParams(dtype, scale.astype(np.float32), zp_arr, axis, round_mode)


def folded_weight(node: onnx.NodeProto, view: GraphView) -> np.ndarray | None:
    """The integers a quantize step of a float constant computes (NNCF's and Brevitas' weights,
    ``DequantizeLinear(QuantizeLinear(W))``), which the QCDQ legalisation that check and compile
    share stores in its place (``check/qcdq.py`` asks this), else ``None``: an int32 step (a bias at ``sx * sw``) or
    one whose parameters are not constants stays a step computed at run time.  :class:`QuantFacts`
    reads a dequantize step of such a step as the stored integers, so check places the layer as
    compile lowers it; before, check put such Conv/Gemm layers on the CPU ("weights computed at run
    time") while compile folded and lowered them."""
    mode = quantize_mode(node)
    w = view.const(node.input[0]) if mode is not None else None
    if w is None or w.dtype.kind != "f":
        return None
    p = step_params(view, node, *mode)
    if p is None or p.dtype == "int32":
        return None
    return numerics.quantize(w, p.scale, p.zero_point, bits=p.bits, signed=p.signed, round_mode=p.round_mode,
                             axis=p.axis)


class QuantFacts:
    """The graph questions :func:`lowering_limit` and the chain walks ask, answered as the
    compiler answers them; the checker builds it on its view, the compiler on its ``QGraph``
    (``QGraph.facts``), so neither can read a graph differently from the other.

    A quantize step is :func:`npuflow.graph.quantize_mode`'s (``QuantizeLinear`` or an
    ``ai.npuflow:Quantize_<mode>_<dtype>`` function whose name parses), a dequantize step a
    ``DequantizeLinear``; a constant is an initializer or the stored integers behind one
    dequantize step: an integer initializer, or the integers ``compile`` folds a quantize step of a
    float constant into (:func:`folded_weight`).
    """

    def __init__(self, view: GraphView, runs: Callable[[onnx.NodeProto], bool] | None = None) -> None:
        self.view = view
        #: whether the target has the node's op at all (:func:`target_runs`); ``None``: every op.
        #: :func:`grid_step` gives no quantize step to, and walks through no, op the target runs on the CPU
        self.runs = runs
        #: a QDQ model: nodes the quantizer left in float are not lowered
        self.quantized = any(quantize_mode(n) is not None or is_dequantize(n) for n in view.nodes)
        #: a dynamically quantized model (:func:`dynamic_quantization`'s reason): nothing is lowered
        self.dynamic = dynamic_quantization(view.nodes)
        self._folded: dict[str, np.ndarray | None] = {}

    def shape(self, name: str) -> list[int] | None:
        """The declared static shape."""
        s = self.view.shapes.get(name)
        return list(s) if s is not None else None

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value (behind a dequantize step: the stored integers, or those a quantize
        step of a float constant computes, :func:`folded_weight`), else ``None``."""
        p = self.view.producer_node(name)
        if p is None or not is_dequantize(p):
            return self.view.const(name)
        q = self.view.producer_node(p.input[0])
        if q is None:
            return self.view.const(p.input[0])
        if p.input[0] not in self._folded:
            self._folded[p.input[0]] = folded_weight(q, self.view)
        return self._folded[p.input[0]]

    def elem_type(self, name: str) -> int | None:
        return self.view.elem_type(name)

    def producer_node(self, name: str) -> onnx.NodeProto | None:
        return self.view.producer_node(name)

    def consumer_nodes(self, name: str) -> list[onnx.NodeProto]:
        return self.view.consumer_nodes(name)

    def is_graph_output(self, name: str) -> bool:
        return self.view.is_graph_output(name)

    @staticmethod
    def is_quantize(node: onnx.NodeProto) -> bool:
        return quantize_mode(node) is not None

    is_dequantize = staticmethod(is_dequantize)

    def position(self, node: onnx.NodeProto) -> int:
        """The node's index in the graph (a topological order)."""
        return self.view.position(node)

    def table_ops(self, node: onnx.NodeProto) -> frozenset[str]:
        """What a table starting or ending at ``node`` walks through (a GELU's ``Erf`` too:
        :func:`npuflow.passes.gelu.table_ops`, seen through Q/DQ steps as the checker sees it)."""
        return table_ops(node, pattern_view(self.view))


def target_runs(view: GraphView, target: Target) -> Callable[[onnx.NodeProto], bool] | None:
    """Whether ``target`` has an op kind for a node (its rule, as the checker asks first), for
    :class:`QuantFacts`; ``None`` on a CPU target, which runs every op the compiler lowers.  The
    checker and ``compile``'s legalisation (``compiler/foreign.py``) both pass it, so neither gives a
    quantize step to the reshapes around a Transpose bernoulli2 cannot run (MobileViT)."""
    if target.kind == "cpu":
        return None
    kinds: dict[int, bool] = {}

    def runs(node: onnx.NodeProto) -> bool:
        k = view.position(node)
        if k not in kinds:
            kinds[k] = target.rule(classify(node, view, k).kind) is not None
        return kinds[k]

    return runs
