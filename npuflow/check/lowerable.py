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

Both sides see the graph through one :class:`~.quant_facts.QuantFacts`; the compiler may import this module, never
the reverse (``docs/architecture.md``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto

from ..numerics import fix_pos_of
from ..operators import (CHAIN_OPS, CLAMP_OPS, GRID_OPS, LOWERED_OPS, ORDER_KEEPING_OPS, PRELU_MAX_SLOPES,
                         REWRITTEN_OPS, TABLE_OPS, WEIGHTED_OPS, Engine, node_attr, op_def)
from ..passes.linear_bias import linear_bias
from ..passes.resize_linear import linear_resize_reason
from .quant_facts import QuantFacts

#: Longest fused chain (nodes between a layer and its quantize step).
MAX_CHAIN = 8
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
#: Types of the quantize/dequantize steps an integer program reads and writes (not int4/float8).
INTEGER_TYPES = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
                           TensorProto.INT32})


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


def _prelu(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    reason = _constant_params(node, t)
    slope = t.value(node.input[1]) if reason is None else None
    if slope is not None and slope.size > PRELU_MAX_SLOPES:
        reason = (f"PRelu with {slope.size} slopes (one per element) is not lowered: one code table per slope, "
                  f"at most {PRELU_MAX_SLOPES}")
    return reason


def _pad(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    reason = _constant_params(node, t)
    pads = t.value(node.input[1]) if len(node.input) > 1 and node.input[1] else node_attr(node, "pads")
    if reason is None and pads is not None and np.any(np.asarray(pads) < 0):
        reason = "negative pads are not lowered"
    return reason


def _resize(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    mode = node_attr(node, "mode", "nearest")
    if mode == "linear":
        return f"Resize mode 'linear' is not lowered as a Resize ({linear_resize_reason(node, t.value, t.shape)})"
    if mode != "nearest":
        return f"Resize mode {mode!r} is not lowered (nearest, and linear as a depthwise ConvTranspose)"
    return _constant_params(node, t)


def _div(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    divisor = t.value(node.input[1]) if len(node.input) > 1 else None
    if divisor is None or divisor.size != 1 or (t.quantized and divisor.dtype.kind != "f"):
        return "Div is lowered only as an activation chain, divided by a float scalar constant"
    return None


def _clamp(node: onnx.NodeProto, t: QuantFacts) -> str | None:
    """``Max``/``Min`` of one tensor and a scalar constant is a clamp, lowered as a lookup table; of
    two tensors (``torch.maximum``), a table per operand to the output's codes and the larger or
    smaller code (``numerics.select_codes``).  A constant tensor operand, or more than two, are not."""
    consts = [t.value(i) for i in node.input]
    if len(node.input) == 2 and all(c is None for c in consts):
        return None
    if len(node.input) != 2 or sum(c is not None for c in consts) != 1 or \
            any(c is not None and (c.size != 1 or (t.quantized and c.dtype.kind != "f")) for c in consts):
        return (f"{node.op_type} is lowered only as a clamp (one tensor and a float scalar constant) or between "
                f"two tensors")
    return None


def selects_two_tensors(node: onnx.NodeProto, t: QuantFacts) -> bool:
    """A ``Max``/``Min`` of two computed tensors (the form :func:`_clamp` takes besides a clamp)."""
    return node.op_type in CLAMP_OPS and len(node.input) == 2 and all(t.value(i) is None for i in node.input)


def _chain_limit(node: onnx.NodeProto, chain: list[onnx.NodeProto], t: QuantFacts) -> str | None:
    """A ``Softmax`` is lowered with its quantize step right after it (no chain: its program ends in
    the quantize step).  A two-tensor ``Max``/``Min`` takes each operand's table through the chain
    after it, which is exact only where the chain keeps order (``Q(f(max(a, b))) = max(Q(f(a)), Q(f(b)))``)."""
    if node.op_type == "Softmax" and chain:
        return (f"Softmax is lowered only with its quantize step right after it ({chain[0].op_type} "
                f"{chain[0].name!r} comes between)")
    if not selects_two_tensors(node, t):
        return None
    bad = [c.op_type for c in chain if c.op_type not in ORDER_KEEPING_OPS]
    if bad:
        return (f"{node.op_type} of two tensors is followed by {bad[0]} before its quantize step, which does not "
                f"keep order; only order-keeping activations ({', '.join(sorted(ORDER_KEEPING_OPS))}) fuse after it")
    return None


_OP_LIMITS: dict[str, Callable[[onnx.NodeProto, QuantFacts], str | None]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
    "MaxPool": _pool, "AveragePool": _pool, "GlobalMaxPool": _pool, "GlobalAveragePool": _pool,
    "Slice": _constant_params, "PRelu": _prelu, "Pad": _pad, "Resize": _resize, "Div": _div,
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
        table = node.op_type in TABLE_OPS and not selects_two_tensors(node, t)
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
        reason = _chain_limit(node, found[0], t)
        if reason:
            return reason
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
    if (d.chain or d.table) and d.engine is Engine.ELTWISE and any(_float_constant(i, t) for i in node.input if i):
        return True  # a clamp's Max/Min too
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
