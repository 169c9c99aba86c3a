"""Which nodes the integer compiler lowers: one answer for ``check`` and ``compile`` (issue 17).

A node the checker places on the accelerator must be one ``compile`` turns into an integer op, by
construction: the checker (:mod:`.place`) and the compiler (``compiler/lowering.py``) both ask
:func:`lowering_limit` before anything else, so neither can accept a node the other refuses for a
reason of the graph.  The answer depends on the graph alone: the op type, its attributes, the
ranks, static shapes and element types of its tensors, which operands are constants, and, in a
quantized model, whether the quantizer quantized the node at all (its data comes through
dequantize steps and leaves through a quantize step; a node it left in float runs in float, on
the CPU).  *How* a tensor is quantized (per channel, bit width, zero point) is the quantizer's
contract with the target (``quant/legalize.py``), not a placement question.  One question reads
the target: :func:`grid_step` gives no quantize step to, and walks through no, op the target does
not have (``QuantFacts.runs``; bernoulli2's ``Transpose``), which both sides pass in.

Both sides see the graph through one :class:`QuantFacts`; the compiler may import this module, never
the reverse (``docs/architecture.md``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto

from .. import numerics
from ..graph import GraphView, is_dequantize, quantize_mode
from ..numerics import RoundMode, fix_pos_of
from ..passes.gelu import table_ops
from .fusion import pattern_view
from ..passes.linear_bias import linear_bias
from ..targets import Target
from .ops import classify
from ..operators import (CHAIN_OPS, GRID_OPS, LOWERED_OPS, REWRITTEN_OPS, TABLE_OPS, WEIGHTED_OPS, Engine,
                         node_attr, op_def)

#: Longest fused chain (nodes between a layer and its quantize step).
MAX_CHAIN = 8
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
#: Types of the quantize/dequantize steps an integer program reads and writes (not int4/float8).
INTEGER_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
                           TensorProto.INT32})


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


def lowering_limit(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """Why ``node`` cannot become an integer op whatever its quantization, or ``None``."""
    op = node.op_type
    if t.dynamic is not None:
        return t.dynamic
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}:{op} has no integer lowering"
    if op in REWRITTEN_OPS:
        return _batchnorm(node, t) if not t.quantized else (
            f"{op} has no integer lowering in a quantized model (npuflow's float passes turn it into a "
            f"convolution before quantizing)")
    if op not in LOWERED_OPS | TABLE_OPS:
        return f"{op} has no integer lowering"
    return _form_limit(node, t) or (_quantized_io(node, t) if t.quantized else None)


def _form_limit(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """What in ``node``'s own types, shapes and attributes keeps it from being lowered (a 3-D
    ``MaxPool`` on a 5-D tensor: only 2-D pooling is lowered), whatever the quantization around it."""
    return _types(node, t) or _static(node, t) or _OP_LIMITS.get(node.op_type, _no_limit)(node, t)


def _data_inputs(node: onnx.NodeProto) -> list[str]:
    """The inputs that carry data; the others (shapes, pads, scales, bounds) must be constants."""
    return [node.input[k] for k in op_def(node.op_type, node.domain).data_inputs(node)]


def _no_limit(node: onnx.NodeProto, t: QuantFacts) -> None:
    return None


def _types(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """The accelerator computes on quantized real numbers: integer and bool tensors (indices,
    masks, shape arithmetic) stay with the CPU."""
    for name in [*_data_inputs(node), *(o for o in node.output if o)]:
        et = t.elem_type(name)
        if et is not None and et not in _FLOAT_TYPES:
            return (f"{node.op_type} computes on {_type_name(et)} tensor {name!r}; the accelerator computes only on "
                    f"quantized real-valued tensors")
    return None


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _static(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    for name in [*_data_inputs(node)[:1], *(o for o in node.output if o)]:
        if t.value(name) is not None:
            continue
        s = t.shape(name)
        if s is None or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in s):
            return f"tensor {name!r} has no static shape"
        if not s:  # openWakeWord's mel model: Sub(ReduceMax(x), 80) on one number
            return f"tensor {name!r} is a scalar (rank 0); accelerator programs compute on arrays"
    return None


def _weight_rank(node: onnx.NodeProto, t: QuantFacts, ranks: tuple[int, ...], what: str) -> str | None:
    w = t.value(node.input[1])
    if w is None:
        return f"{node.op_type} with weights computed at run time is not lowered"
    if w.ndim not in ranks:
        return f"only {what} are lowered ({node.op_type} weights of rank {w.ndim})"
    return None


def _conv(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    return _weight_rank(node, t, (3, 4), "1-D and 2-D convolutions")


def _conv_transpose(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    if node_attr(node, "auto_pad", "NOTSET") != "NOTSET" or node_attr(node, "output_shape") is not None:
        return "auto_pad/output_shape on ConvTranspose is not lowered"
    return _weight_rank(node, t, (4,), "2-D transposed convolutions")


def _gemm(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    if node_attr(node, "transA", 0) or node_attr(node, "alpha", 1.0) != 1.0 or node_attr(node, "beta", 1.0) != 1.0:
        return "Gemm with transA, alpha or beta is not lowered"
    if len(t.shape(node.input[0]) or []) != 2:
        return "Gemm operands must be 2-D"
    bias = t.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
    if bias is None or bias.ndim != 1:
        return "Gemm bias must be a 1-D constant"
    return _weight_rank(node, t, (2,), "2-D Gemm operands")


def _matmul(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """Only ``x @ W`` (and activation x activation) is lowered: the integer programs take a MatMul's
    constant as the second operand; as the first (``W @ x``) it would be read as a run-time input no
    subgraph writes."""
    if t.value(node.input[0]) is not None:
        return "MatMul's first operand is a constant (W @ x); only x @ W is lowered"
    w = t.value(node.input[1])
    return "MatMul constant must be 2-D" if w is not None and w.ndim != 2 else None


def _pool(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    if len(t.shape(node.input[0]) or []) != 4:
        return "only 2-D pooling is lowered"
    if len(node.output) > 1 and node.output[1]:
        return "MaxPool with indices output is not lowered"
    return None


def _constant_params(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    for i in node.input[1:]:
        if i and t.value(i) is None:
            return f"{node.op_type} parameter {i!r} must be a constant"
    return None


def _pad(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    reason = _constant_params(node, t)
    pads = t.value(node.input[1]) if len(node.input) > 1 and node.input[1] else node_attr(node, "pads")
    if reason is None and pads is not None and np.any(np.asarray(pads) < 0):
        reason = "negative pads are not lowered"
    return reason


def _resize(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    mode = node_attr(node, "mode", "nearest")
    if mode != "nearest":
        return f"Resize mode {mode!r} is not lowered (nearest only)"
    return _constant_params(node, t)


def _div(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    divisor = t.value(node.input[1]) if len(node.input) > 1 else None
    if divisor is None or divisor.size != 1 or (t.quantized and divisor.dtype.kind != "f"):
        return "Div is lowered only as an activation chain, divided by a float scalar constant"
    return None


def _clamp(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """``Max``/``Min`` of one tensor and a scalar constant is a clamp, lowered as a lookup table;
    of two tensors it would need an elementwise kernel the programs do not have."""
    consts = [t.value(i) for i in node.input]
    if len(node.input) != 2 or sum(c is not None for c in consts) != 1 or \
            any(c is not None and (c.size != 1 or (t.quantized and c.dtype.kind != "f")) for c in consts):
        return f"{node.op_type} is lowered only as a clamp: one tensor and a float scalar constant"
    return None


_OP_LIMITS: dict[str, Callable[[onnx.NodeProto, QuantFacts], str | None]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
    "MaxPool": _pool, "AveragePool": _pool, "GlobalMaxPool": _pool, "GlobalAveragePool": _pool,
    "Slice": _constant_params, "PRelu": _constant_params, "Pad": _pad, "Resize": _resize, "Div": _div,
    "Max": _clamp, "Min": _clamp,
}


def _batchnorm(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """A float model's BN: folded into its layer, else written as a 1x1 depthwise convolution
    (``passes/fold_batchnorm.py``), on a 1-D or 2-D feature map with constant statistics."""
    if len(t.shape(node.input[0]) or []) not in (3, 4):
        return "BatchNormalization on a tensor of rank other than 3 or 4 cannot become a convolution"
    if any(t.value(i) is None for i in node.input[1:5]) or len([o for o in node.output if o]) != 1:
        return "BatchNormalization with statistics computed at run time (training mode) is not lowered"
    return _types(node, t)


def _quantized_io(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """In a quantized model: data and weights come through dequantize steps (a float constant
    only as the scalar of an activation chain), results reach quantize steps, all of integer
    types the programs compute in."""
    for name in _data_inputs(node):
        table = node.op_type in TABLE_OPS
        steps = _dequantize_steps(name, t, through_tables=table, tables=t.table_ops(node) if table else TABLE_OPS)
        if steps is None:
            v = t.value(name)
            if v is None:
                return f"input {name!r} is not quantized (it runs in float)"
            if name == _bias_input(node) and _float_constant(name, t):
                reason = float_bias_limit(node, t)
                if reason:
                    return reason
                continue
            if node.op_type not in TABLE_OPS or v.size != 1:
                return f"constant {name!r} is not a quantized initializer"
            continue
        reason = _step_types(steps, [s.input[0] for s in steps], t)
        if reason:
            return reason
    reason = weight_zero_point_limit(node, t) or _alignment_limit(node, t)
    if reason:
        return reason
    for o in node.output:
        if not o:
            continue
        if not t.consumer_nodes(o) or t.is_graph_output(o):
            return f"output {o!r} is not quantized (it runs in float)"
        found = output_chain(node, o, t)
        if found is None and grid_step(node, t):
            continue
        if found is None:
            return f"output {o!r} does not reach a single quantize step"
        q = found[1]
        reason = _step_types([q], [q.output[0]], t)
        if reason:
            return reason
    return None


#: the largest shift an integer Add/Sub aligns an operand by (the programs' int32 accumulator)
MAX_ALIGN_SHIFT = 31


def _alignment_limit(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """An ``Add``/``Sub`` of power-of-two operands whose scales are more than ``2**31`` apart: the
    integer program shifts the coarser operand onto the finer one's grid in int32, which no such
    shift fits (a file with one failed its own manifest check when loaded, "align <= 31")."""
    if node.op_type not in ("Add", "Sub"):
        return None
    fixes = []
    for name in node.input[:2]:
        dq = t.producer_node(name) if name else None
        scale = t.value(dq.input[1]) if dq is not None and t.is_dequantize(dq) and len(dq.input) > 1 else None
        fix = fix_pos_of(scale) if scale is not None and scale.size == 1 and float(scale.reshape(-1)[0]) > 0 else None
        if fix is None:  # no scale, or a float one: no alignment shift
            return None
        fixes.append(int(fix.reshape(-1)[0]))
    if abs(fixes[0] - fixes[1]) > MAX_ALIGN_SHIFT:
        return (f"{node.op_type} of operands whose scales are 2^{abs(fixes[0] - fixes[1])} apart: the integer "
                f"alignment shift exceeds {MAX_ALIGN_SHIFT} bits")
    return None


def weight_zero_point_limit(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """Why a layer's integer weight or bias cannot be lowered for its zero point, or ``None``: the
    integer programs multiply stored weights as they are (``compiler/lowering._weight``), so a
    constant behind a dequantize step of a non-zero zero point (ONNX Runtime's
    ``WeightSymmetric: False`` and QUInt8 weights, NNCF's asymmetric weights) keeps the layer in
    float on the CPU.  Asked by :func:`lowering_limit`, so check says what compile does; before
    (2026-12-05), check placed such layers on cpu-int8's accelerator and compile ran them on the
    CPU (7 of 7 nodes differed on a one-Conv model)."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
    for name in node.input[1:3] if node.op_type != "MatMul" else node.input[1:2]:
        dq = t.producer_node(name) if name else None
        if dq is None or not t.is_dequantize(dq) or len(dq.input) < 3 or not dq.input[2] or t.value(name) is None:
            continue
        zp = t.value(dq.input[2])
        if zp is not None and np.any(zp != 0):
            return (f"constant {name!r} has a non-zero zero point ({int(zp.reshape(-1)[np.argmax(zp.reshape(-1) != 0)])}); "
                    f"the integer programs take weights and biases of zero point 0 (quantize weights symmetrically)")
    return None


def _bias_input(node: onnx.NodeProto) -> str:
    """The bias operand of a Conv/Gemm (``""`` when none): the one constant a layer may hold in float."""
    return node.input[2] if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 else ""


def float_bias_limit(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """Why ``compile`` would not turn ``node``'s float bias into an int32 bias at ``sx * sw`` before
    lowering (``compiler/foreign.py``, NNCF's float biases), or ``None`` when it does: a Conv/Gemm
    (alpha = beta = 1) whose data comes through one per-tensor dequantize step (directly, or through
    ops :func:`grid_step` gives a step of that grid, which ``compile`` adds first), whose weight comes
    through a dequantize step of constant parameters, and whose output reaches one quantize step.
    Check accepts exactly such a bias and ``compile`` quantizes exactly these (it asks this too), so
    both place the layer alike; before, check put NNCF's layers on the CPU ("not a quantized
    initializer") and compile lowered them."""
    bias = _bias_input(node)
    if not bias or node.domain not in ("", "ai.onnx") or not _float_constant(bias, t):
        return f"{node.op_type} {node.name!r} has no float bias"
    if node.op_type == "Gemm" and (node_attr(node, "alpha", 1.0) != 1.0 or node_attr(node, "beta", 1.0) != 1.0):
        return "Gemm with alpha or beta has no int32 bias at sx*sw"
    steps = _dequantize_steps(node.input[0], t, through_tables=False)
    x_scale = t.value(steps[0].input[1]) if steps and len(steps) == 1 and len(steps[0].input) > 1 else None
    if x_scale is None or x_scale.size != 1:
        return (f"float bias {bias!r} stays float: input {node.input[0]!r} does not come through one per-tensor "
                f"dequantize step")
    w = t.producer_node(node.input[1])
    if w is None or not t.is_dequantize(w) or len(w.input) < 2 or t.value(w.input[1]) is None:
        return f"float bias {bias!r} stays float: weight {node.input[1]!r} does not come through a dequantize step"
    if chain_to_quantize(node.output[0], t.consumer_nodes(node.output[0]), t) is None:
        return (f"output {node.output[0]!r} is not quantized, so its float bias {bias!r} stays float with the "
                f"layer (it runs in float)")
    return None


def output_chain(node: onnx.NodeProto, output: str, t: QuantFacts) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The fused chain and quantize step the compiler lowers ``node``'s ``output`` with: a lookup
    table (``node`` and the elementwise ops after it) for a standalone activation, else the
    epilogue chain after the node."""
    if table_lowered(node, t):
        data = next((i for i in node.input if i and t.value(i) is None), None)
        return None if data is None else chain_to_quantize(data, [node], t, t.table_ops(node))
    bias = linear_bias(node, t.view)  # the int32 bias Add of a linear layer is part of the layer
    if bias is not None:
        found = chain_to_quantize(bias.output, t.consumer_nodes(bias.output), t)
        return None if found is None else ([bias.add, *found[0]], found[1])
    return chain_to_quantize(output, t.consumer_nodes(output), t)


def table_lowered(node: onnx.NodeProto, t: QuantFacts) -> bool:
    """Whether the compiler lowers ``node`` as a lookup table: an elementwise op without a
    lowering of its own, or arithmetic with a float scalar (a hard-sigmoid's ``Add``/``Mul``)."""
    d = op_def(node.op_type, node.domain)
    if d.chain and d.engine is Engine.ELTWISE and any(_float_constant(i, t) for i in node.input if i):
        return True
    return node.op_type not in LOWERED_OPS and node.op_type in TABLE_OPS


def _float_constant(name: str, t: QuantFacts) -> bool:
    """A constant stored in float (not a dequantized integer)."""
    p = t.producer_node(name)
    if p is not None and t.is_dequantize(p):
        return False
    v = t.value(name)
    return v is not None and v.dtype.kind == "f"


def _float_scalar(name: str, t: QuantFacts) -> bool:
    return _float_constant(name, t) and t.value(name).size == 1


def chain_to_quantize(t0: str, start: list[onnx.NodeProto], t: QuantFacts,
                      allowed: frozenset[str] = CHAIN_OPS) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The float nodes from ``start`` (which read ``t0``) up to exactly one per-tensor quantize
    step, in graph order, and that step; ``None`` when the values do not all reach one.

    Every chain node may read only ``t0``, tensors made inside the chain and float scalar
    constants, and nothing outside the chain may read a tensor made inside it: the chain is then
    a function of ``t0`` alone, which an epilogue or a lookup table computes.  The checker and the
    compiler (``compiler/epilogue.py``) both call this, so they agree on what fuses.
    """
    internal, chain, seen, work, q_node = {t0}, [], set(), list(start), None
    while work:
        work.sort(key=t.position)
        n = work.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if t.is_quantize(n):
            if q_node is not None:
                return None
            q_node = n
            continue
        if n.op_type not in allowed or len(chain) >= MAX_CHAIN or len(n.output) != 1:
            return None
        if any(i and i not in internal and not _float_scalar(i, t) for i in n.input):
            return None
        if not any(i in internal for i in n.input):
            return None
        chain.append(n)
        if t.is_graph_output(n.output[0]):
            return None
        internal.add(n.output[0])
        work.extend(t.consumer_nodes(n.output[0]))
    if q_node is None or q_node.input[0] not in internal:
        return None
    if t.consumer_nodes(q_node.input[0]) != [q_node] and q_node.input[0] != t0:
        return None
    members = {id(n) for n in chain} | {id(q_node)}
    if any(id(c) not in members for name in internal - {t0} for c in t.consumer_nodes(name)):
        return None
    scale = t.value(q_node.input[1]) if len(q_node.input) > 1 else None
    if scale is None or scale.size != 1:
        return None  # a per-channel quantize step of an activation: no per-tensor epilogue
    return chain, q_node


def _step_types(steps: list[onnx.NodeProto], integers: list[str], t: QuantFacts) -> str | None:
    for step, name in zip(steps, integers):
        et = t.elem_type(name)
        if et is not None and et not in INTEGER_TYPES:
            return (f"{step.op_type} {step.name!r} works on {_type_name(et)} tensors, which integer programs do "
                    f"not compute in")
    return None


def _dequantize_steps(tensor: str, t: QuantFacts, through_tables: bool = True,
                      tables: frozenset[str] = TABLE_OPS) -> list[onnx.NodeProto] | None:
    """The dequantize steps ``tensor`` comes from, directly or through a few elementwise ops
    when the reader is elementwise too (``x * HardSigmoid(x)``: one table over ``x``); ``None``
    when it is not all dequantized.  Any other op (a ``MaxPool`` after a float clamp the target
    runs on the CPU) reads integer codes only from a dequantize step, as the compiler lowers it.
    ``tables``: the ops walked through (a GELU's last node: its ``Erf`` too)."""
    work, steps, seen = [tensor], [], 0
    while work:
        p = t.producer_node(work.pop())
        if p is not None and t.is_dequantize(p):
            steps.append(p)
            continue
        if p is not None and grid_step(p, t):
            work.append(p.input[0])
            continue
        if p is None or not through_tables or p.op_type not in tables or seen > MAX_CHAIN:
            return None
        seen += 1
        work.extend(i for i in p.input if i and t.value(i) is None)
    return steps


def grid_step(node: onnx.NodeProto, t: QuantFacts, depth: int = 0) -> bool:
    """Whether the compiler gives ``node`` a quantize step of its input's parameters
    (``compiler/foreign.py``, for models whose quantizer left one out, as NNCF does before a
    ``MaxPool`` or a reshape): a grid op reading a per-tensor dequantized activation (directly, or
    through grid ops that get such a step), read by no quantize step, whose output reaches a layer
    through grid ops.  Its outputs lie on its input's grid, so the step is exact, and the op and the
    layer after it are lowered.  Not for, nor through, an op the target does not have (``t.runs``):
    check of the float model puts MobileViT's reshapes around bernoulli2's CPU ``Transpose`` on
    the CPU, so compile must not lower them (generator seeds 902, 1278); nor for one whose own form
    is not lowered (:func:`_form_limit`): LPRNet's ``MaxPool3d`` over channels, a 3-D ``MaxPool`` on
    a 5-D tensor, stays on the CPU, so a quantize step after it moved the ``Squeeze`` after it onto
    the accelerator, where check of the float model keeps it in float on the CPU."""
    if node.op_type not in GRID_OPS or node.domain not in ("", "ai.onnx") or len(node.output) != 1 \
            or depth > MAX_CHAIN or (t.runs is not None and not t.runs(node)) or _form_limit(node, t) is not None:
        return False
    p = t.producer_node(node.input[0])
    if p is None:
        return False
    if t.is_dequantize(p):
        scale = t.value(p.input[1]) if len(p.input) > 1 else None
        if scale is None or scale.size != 1 or t.value(p.input[0]) is not None:
            return False
    elif not grid_step(p, t, depth + 1):
        return False
    out = node.output[0]
    if t.is_graph_output(out) or any(t.is_quantize(c) for c in t.consumer_nodes(out)):
        return False
    return _feeds_layer(out, t)


def _quantized_weight(layer: onnx.NodeProto, t: QuantFacts) -> bool:
    """Whether ``layer`` reads its weight through a dequantize step: a layer the quantizer left in
    float (the input cone of a ``Log``) takes float data, so a grid step before it would only put
    the op before it on the accelerator for nothing (``Conv -> MaxPool -> Conv -> ... -> Log``
    on bernoulli2 and cpu-int8: check of the float model placed the MaxPool on the CPU, compile
    lowered it)."""
    k = op_def(layer.op_type, layer.domain).weight
    p = t.producer_node(layer.input[k]) if k is not None and len(layer.input) > k else None
    return p is not None and t.is_dequantize(p)


def _feeds_layer(tensor: str, t: QuantFacts, depth: int = 0) -> bool:
    """Whether ``tensor`` reaches a Conv/Gemm/MatMul, or a quantize step after a grid op, through
    grid ops only; elsewhere (a float Softmax reading a Reshape) a grid step would change nothing
    but the graph."""
    for c in t.consumer_nodes(tensor):
        if (c.op_type in WEIGHTED_OPS and _quantized_weight(c, t)) or (depth and t.is_quantize(c)):
            return True
        if c.op_type in GRID_OPS and depth < MAX_CHAIN and (t.runs is None or t.runs(c)) and \
                _form_limit(c, t) is None and _feeds_layer(c.output[0], t, depth + 1):
            return True
    return False
