"""ONNX Runtime's QOperator ops (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ...)
rewritten as npuflow's QDQ form, ``DequantizeLinear -> float op -> QuantizeLinear``; ops run
directly on integer tensors (QOperator's ``MaxPool``/``Reshape``) are wrapped in a DQ/Q pair of the
same parameters.  The rewrite keeps the model's arithmetic as ONNX Runtime runs it.

``compile``'s legalisation (``compiler/foreign.py``) runs it first, and check runs it on a model
holding such ops before placing (:func:`npuflow.check.place.prepare`), so both judge the same graph
under the same node names (the float op keeps the QOperator node's name); before (2026-12-05),
check judged the QOperator ops themselves and put ``QGemm``/``QLinearMatMul``/``QLinearAdd`` and
the reshapes between them on the CPU, 26 nodes differing from compile on an attention block.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import NpuflowError
from ..graph import attr, attr_values
from ..model import tensor_elem_types
from ..operators import VALUE_MOVING_OPS

_MS = "com.microsoft"
#: QOperator op -> (float op, positions of (x, scale, zp) triples, (scale, zp) of the output).
_QLINEAR: dict[str, tuple[str, list[tuple[int, int, int]], tuple[int, int] | None]] = {
    "QLinearConv": ("Conv", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMatMul": ("MatMul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2)], (3, 4)),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2)], (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4)),
    "QLinearReduceMean": ("ReduceMean", [(0, 1, 2)], (3, 4)),
}
#: Attributes of QOperator ops that their float op does not have.
_DROP_ATTRS = {"channels_last", "opset"}


class _Rewriter:
    """A node list being rebuilt, with fresh names and new initializers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.fresh = NameSet(model).fresh

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def dq(self, x: str, scale: str, zp: str, axis: int | None = None, owner: str = "") -> str:
        out = self.fresh(f"{x}_dequantized")
        kw = {"axis": axis} if axis is not None else {}
        self.nodes.append(helper.make_node("DequantizeLinear", [x, scale, zp] if zp else [x, scale], [out],
                                           name=self.fresh(f"{owner or x}_DequantizeLinear"), **kw))
        return out

    def q(self, x: str, scale: str, zp: str, out: str, owner: str) -> None:
        self.nodes.append(helper.make_node("QuantizeLinear", [x, scale, zp] if zp else [x, scale], [out],
                                           name=self.fresh(f"{owner}_QuantizeLinear")))

    def commit(self) -> None:
        del self.model.graph.node[:]
        self.model.graph.node.extend(self.nodes)
        self.model.graph.initializer.extend(self.inits)


def is_qlinear(n: onnx.NodeProto) -> bool:
    """A QOperator op this module rewrites."""
    return (n.op_type in _QLINEAR or n.op_type in ("QGemm", "QLinearConcat")) and n.domain in ("", "ai.onnx", _MS)


def qoperator_to_qdq(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model``'s QOperator ops in place into QDQ form; one note per kind of change
    (none: the model has no QOperator op)."""
    if not any(is_qlinear(n) for n in model.graph.node):
        return []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    types = tensor_elem_types(model)
    rw = _Rewriter(model)
    grid: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point) names
    counts: dict[str, int] = {}
    wrapped: dict[str, int] = {}
    kept: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            grid[n.output[0]] = (n.input[1], n.input[2] if len(n.input) > 2 else "")
            rw.nodes.append(n)
        elif is_qlinear(n):
            _expand_qlinear(rw, n, inits, grid)
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        elif _moves_integers(n) and any(i in grid for i in n.input):
            _wrap_integer_op(rw, n, grid, types)
            wrapped[n.op_type] = wrapped.get(n.op_type, 0) + 1
        else:
            kept.update([n.op_type] if any(i in grid for i in n.input) and n.op_type != "DequantizeLinear" else [])
            rw.nodes.append(n)
    rw.commit()
    done = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    notes = [f"legalised ONNX Runtime QOperator ops to QDQ (DequantizeLinear -> float op -> QuantizeLinear): {done}"]
    if wrapped:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(wrapped.items()))
        notes.append(f"legalised ops run on integer tensors to DQ -> op -> Q with the same parameters: {ops}")
    if kept:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(kept.items()))
        notes.append(f"kept ops that read integer tensors as they are (not data movement; they run on the CPU "
                     f"as ONNX Runtime runs them): {ops}")
    return notes


def _moves_integers(n: onnx.NodeProto) -> bool:
    """Ops whose result on integer codes equals DQ -> op -> Q with the input's parameters."""
    if n.domain not in ("", "ai.onnx"):
        return False
    return n.op_type in VALUE_MOVING_OPS or (n.op_type == "Resize" and attr(n, "mode", "nearest") == "nearest")


def _weight_axis(n: onnx.NodeProto, scale: np.ndarray | None) -> int | None:
    """The channel axis of a per-channel weight operand (``None`` when per tensor)."""
    if scale is None or scale.size <= 1:
        return None
    if n.op_type == "QLinearConv":
        return 0
    return 0 if n.op_type == "QGemm" and attr(n, "transB", 0) else 1


def _expand_qlinear(rw: _Rewriter, n: onnx.NodeProto, inits: dict, grid: dict) -> None:
    """One QOperator node -> DQ per quantized input, the float op, Q of the output."""
    if attr(n, "channels_last", 0):
        raise NpuflowError("NPF_COMPILE_FOREIGN_UNSUPPORTED", node=n.name, op=n.op_type,
                           reason="channels_last=1 has no float ONNX equivalent")
    if n.op_type == "QLinearConcat":
        triples = [(i, i + 1, i + 2) for i in range(2, len(n.input), 3)]
        float_op, out_q, extra = "Concat", (0, 1), []
    elif n.op_type == "QGemm":
        triples, float_op = [(0, 1, 2), (3, 4, 5)], "Gemm"
        out_q = (7, 8) if len(n.input) > 7 and n.input[7] else None
        extra = [6] if len(n.input) > 6 and n.input[6] else []
    else:
        float_op, triples, out_q = _QLINEAR[n.op_type]
        extra = [8] if n.op_type == "QLinearConv" and len(n.input) > 8 and n.input[8] else []
    floats = []
    for x, s, z in triples:
        zp = n.input[z] if z < len(n.input) else ""
        axis = _weight_axis(n, inits.get(n.input[s])) if n.input[x] in inits else None
        floats.append(rw.dq(n.input[x], n.input[s], zp, axis, owner=f"{n.name}_in{len(floats)}"))
    for b in extra:  # int32 bias at alpha * sx * sw, zero point 0
        sx, sw = inits.get(n.input[1]), inits.get(n.input[4])
        if sx is None or sw is None:
            raise NpuflowError("NPF_COMPILE_FOREIGN_UNSUPPORTED", node=n.name, op=n.op_type,
                               reason="its input and weight scales are not constants")
        scale = (np.float32(attr(n, "alpha", 1.0)) * sx.astype(np.float32) * sw.astype(np.float32)).astype(np.float32)
        s_name = rw.const(f"{n.input[b]}_scale", scale.reshape(-1) if scale.size > 1 else scale.reshape(()))
        z_name = rw.const(f"{n.input[b]}_zero_point", np.zeros(scale.shape if scale.size > 1 else (), np.int32))
        floats.append(rw.dq(n.input[b], s_name, z_name, 0 if scale.size > 1 else None, owner=f"{n.name}_bias"))
    attrs = {k: v for k, v in attr_values(n).items() if k not in _DROP_ATTRS}
    y = n.output[0]
    mid = rw.fresh(f"{y}_float") if out_q else y
    rw.nodes.append(helper.make_node(float_op, floats, [mid], name=n.name, **attrs))
    if out_q:
        zp = n.input[out_q[1]] if out_q[1] < len(n.input) else ""
        rw.q(mid, n.input[out_q[0]], zp, y, n.name)
        grid[y] = (n.input[out_q[0]], zp)


def _wrap_integer_op(rw: _Rewriter, n: onnx.NodeProto, grid: dict, types: dict[str, int]) -> None:
    """An op QOperator runs on integer codes (MaxPool, Reshape, ...) -> DQ -> op -> Q, every
    integer input and output with the first one's parameters: the op only moves codes, so one
    common grid gives back exactly the codes it moved, whatever grid each input came from."""
    first = next(i for i in n.input if i in grid)
    params, int_type = grid[first], types.get(first)
    inputs = [rw.dq(i, *params, owner=f"{n.name}_in{k}") if i in grid else i for k, i in enumerate(n.input)]
    outputs, requant = [], []
    for o in n.output:
        if o and types.get(o) == int_type:
            outputs.append(rw.fresh(f"{o}_float"))
            requant.append((outputs[-1], o))
        else:
            outputs.append(o)
    rw.nodes.append(helper.make_node(n.op_type, inputs, outputs, name=n.name, domain=n.domain,
                                     **attr_values(n)))
    for mid, o in requant:
        rw.q(mid, *params, o, n.name)
        grid[o] = params


class NameSet:
    """Node and tensor names of a model, to make new ones unique."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.taken = {n.name for n in g.node} | {o for n in g.node for o in n.output}
        self.taken |= {t.name for t in g.initializer} | {i.name for i in g.input}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name
