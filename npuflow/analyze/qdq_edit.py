"""Per-layer precision edits on a QDQ model: keep a layer in float, or raise it to int16.

Sensitivity analysis and the automatic mixed-precision search try many precision assignments;
re-running the quantizer for each would repeat calibration.  Instead they edit the quantized
model directly (the format of ``docs/quantized-model-format.md``):

* a layer's *quantization points* are its weight and bias ``DequantizeLinear`` inputs and the
  quantize/dequantize pair on its output (after the activation fused into it: a ``Relu``, a
  ``Clip``, a legalised hard-swish chain);
* every other activation pair (outputs of ``Add``, ``Mul``, hard-swish, pooling ...) is a
  weightless "layer" of its own, named after the node that produces the tensor: on networks
  such as PP-OCRv4 rec the loss sits in those elementwise ops between the weighted layers, so a
  search over weighted layers alone cannot reach its target;
* *float*: the weight and bias become float initializers (the float model's values when the
  layer is found there by name) and the output pair becomes an ``Identity`` unless an integer
  layer reads it: that reader needs integers, so the pair stays as the CPU -> accelerator
  boundary the quantizer builds for ``keep_float``.  Pairs are kept or dropped by the
  quantizer's own rules, so an edited model quantizes the same tensors as re-quantizing with
  its float layers in ``keep_float`` (scales aside: the edit keeps the calibrated ones);
* *int16*: weights are re-quantized to 16 bits with a scale covering the float weights (a
  power of two when the int8 scale was one: the int8 scale of a power-of-two mse search clips
  outliers, and a 16-bit scale 256x finer would keep that clipping: EfficientNet-Lite0 on
  B4096 with every point in int16 stayed at 92 % FP32 agreement); the output pair quantizes
  to int16 with a scale 256x finer than its int8 one (no float range is at hand here) and
  the pair's own rounding rule (``ai.npuflow:Quantize_<mode>_int16``, see :mod:`npuflow.qdq`);
  the bias returns to the float model's, undoing bias correction's int8 compensation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import qdq
from ..numerics import RoundMode, quantize
from ..operators import DATA_MOVEMENT, FOLLOWERS, MAX_UNIT_NODES, QUANTIZED_OPS, UNIT_OPS, unit_kind
from ..quant.algorithms.graph import consumers, get_array, layer_bias, layer_weight, producers, weight_layers
from ..quant.algorithms.qdq_weights import QuantizedLayer, dequantized_weight, quantized_layers, write_bias
from ..quant.config import TensorSettings
from ..quant.plan import node_key
from ..quant.params import weight_params

PRECISIONS = ("int8", "int16", "float")
#: int16 activation scales are this much finer than the int8 scale they replace (2**8: keeps power-of-two).
INT16_REFINE = 256.0


@dataclass
class QuantPoint:
    """An activation quantize/dequantize pair: the Q node and the DQ node after it."""

    q: onnx.NodeProto
    dq: onnx.NodeProto


@dataclass
class LayerPoints:
    name: str
    op_type: str
    layer: QuantizedLayer | None  # None: a weightless op (only its output pair can change)
    outputs: list[QuantPoint] = field(default_factory=list)


def _is_quantize(n: onnx.NodeProto) -> bool:
    return n.op_type == "QuantizeLinear" or (n.domain == qdq.DOMAIN and n.op_type.startswith("Quantize_"))


def activation_points(model: onnx.ModelProto) -> list[QuantPoint]:
    """Every Q -> DQ pair on an activation tensor."""
    cons = consumers(model)
    inits = {t.name for t in model.graph.initializer}
    points = []
    for n in model.graph.node:
        if _is_quantize(n) and n.input[0] not in inits:
            for u in cons.get(n.output[0], []):
                if u.op_type == "DequantizeLinear":
                    points.append(QuantPoint(n, u))
    return points


def layer_points(model: onnx.ModelProto) -> list[LayerPoints]:
    """Quantization points of every weight layer, then of every other op with a quantized output."""
    cons = consumers(model)
    points = activation_points(model)
    by_input = {p.q.input[0]: p for p in points}
    order = {node_key(n): k for k, n in enumerate(model.graph.node)}
    floats = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}

    def scalar(name: str) -> float | None:
        t = floats.get(name)
        v = numpy_helper.to_array(t) if t is not None else None
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    out = []
    owned: set[str] = set()
    for ql in quantized_layers(model):
        tensor = _fused_output(ql.node.output[0], cons, order, scalar)
        pts = [by_input[tensor]] if tensor in by_input else []
        owned.update(p.q.input[0] for p in pts)
        out.append(LayerPoints(ql.name, ql.node.op_type, ql, pts))
    producer = producers(model)
    taken = {lp.name for lp in out}
    for p in points:
        node = producer.get(p.q.input[0])
        if p.q.input[0] in owned or node is None or not node.name or node.name in taken:
            continue  # graph inputs and unnamed producers have no name to keep in float
        taken.add(node.name)
        out.append(LayerPoints(node.name, node.op_type, None, [p]))
    return out


def _fused_output(tensor: str, cons: dict[str, list[onnx.NodeProto]], order: dict[str, int],
                  scalar: Callable[[str], float | None]) -> str:
    """The tensor where a layer's fused activation ends: ``tensor`` itself when it is
    quantized, or read by anything but one activation unit (:func:`npuflow.operators.unit_kind`,
    the registry's recognition of the units the quantizer fuses) with one quantized output.
    ``order`` gives each node's graph position, ``scalar`` a float constant's value.

    A Conv followed by a hard-swish has no quantize step until the hard-swish's output, so that
    pair is the layer's: keeping the layer in float keeps the whole fused unit in float, as the
    quantizer's ``keep_float`` does (:func:`npuflow.quant.plan.build_plan`).
    """
    seen: dict[str, onnx.NodeProto] = {}
    frontier, ends = [tensor], set()
    while frontier:
        t = frontier.pop()
        users = cons.get(t, [])
        if not users or any(_is_quantize(u) for u in users):
            ends.add(t)
            continue
        for u in users:
            key = node_key(u)
            if u.op_type not in UNIT_OPS or len(u.output) != 1:
                return tensor
            if key not in seen:
                seen[key] = u
                frontier.append(u.output[0])
        if len(seen) > MAX_UNIT_NODES:
            return tensor
    if len(ends) != 1 or unit_kind(sorted(seen.values(), key=lambda n: order[node_key(n)]), scalar) is None:
        return tensor
    return ends.pop()


def _point_mode(p: QuantPoint) -> RoundMode:
    parsed = qdq.parse_function_name(p.q.op_type)
    return parsed[0] if parsed else RoundMode.HALF_EVEN


def _set_input(node: onnx.NodeProto, index: int, name: str) -> None:
    node.input[index] = name


def _float_weights(model: onnx.ModelProto, lp: LayerPoints, float_model: onnx.ModelProto | None):
    """Float weight (stored layout) and bias for a layer: float model values when available."""
    ql = lp.layer
    w = None
    if float_model is not None:
        for fl in weight_layers(float_model):
            if fl.name == lp.name:
                w = layer_weight(float_model, fl)
                b = layer_bias(float_model, fl, w.shape[0]) if fl.bias is not None else None
                break
    expected = dequantized_weight(model, ql)
    if w is None or w.shape != expected.shape:  # not found, or another layout (e.g. a MatMul reused)
        w, b = expected, None
    stored = w if ql.trans_b else w.T
    return stored.astype(np.float32), b


def _replace_input_with_initializer(model: onnx.ModelProto, node: onnx.NodeProto, index: int,
                                    value: np.ndarray, suffix: str) -> None:
    name = f"{node.name or node.output[0]}.{suffix}"
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    _set_input(node, index, name)


def _set_float_weights(model: onnx.ModelProto, lp: LayerPoints, float_model: onnx.ModelProto | None) -> None:
    """Give weight layer ``lp`` its float weight and bias, in place."""
    w, b = _float_weights(model, lp, float_model)
    _replace_input_with_initializer(model, lp.layer.node, 1, w, "float_weight")
    if lp.layer.bias_scale is not None and len(lp.layer.node.input) > 2:
        if b is None:
            b = get_array(model, lp.layer.bias_name).reshape(-1) * lp.layer.bias_scale
        _replace_input_with_initializer(model, lp.layer.node, 2, np.asarray(b), "float_bias")


def _set_float_constants(model: onnx.ModelProto, lp: LayerPoints, floats: dict[str, onnx.TensorProto],
                         inits: set[str], prod: dict[str, onnx.NodeProto]) -> None:
    """The quantized constant operands of weightless layer ``lp`` (a ``Mul``'s scale, an ``Add``'s
    shift) become the float model's values ``floats``, found by name, as the quantizer leaves a
    node in ``keep_float``: PP-OCRv4 rec with every layer edited to float kept its learnable-affine
    constants in int8 and stayed at output cosine 0.99983."""
    for p in lp.outputs:
        node = prod.get(p.q.input[0])
        for k, t in enumerate(node.input if node is not None else []):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            name = dq.input[0].removesuffix("_quantized")
            if name in floats:
                # one name per input: a ConvTranspose (no weight layer here) has its weight and its
                # bias replaced, and one name for both broke ONNX Runtime's load on PP-OCRv4 det
                _replace_input_with_initializer(model, node, k, numpy_helper.to_array(floats[name]), f"float_const{k}")


def bypass(p: QuantPoint) -> None:
    """Turn a Q -> DQ pair into ``Identity`` (the quantize node stays, unused)."""
    out = p.dq.output[0]
    p.dq.op_type = "Identity"
    p.dq.domain = ""
    del p.dq.attribute[:]
    del p.dq.input[:]
    p.dq.input.append(p.q.input[0])
    p.dq.output[0] = out


def set_int16(model: onnx.ModelProto, lp: LayerPoints, float_model: onnx.ModelProto | None) -> None:
    """Raise layer ``lp`` to 16-bit weights and output, in place.

    The bias goes back to the float model's (on its int32 grid) when the layer is found there:
    bias correction shifted it to cancel the int8 weights' error, which 16-bit weights no longer
    make (PP-OCRv4 rec on B4096 with every point raised: 0.7 % lines with the corrected biases,
    92.3 % with the float ones).
    """
    if lp.layer is None:
        for p in lp.outputs:
            _int16_point(model, p)
        return
    w, b = _float_weights(model, lp, float_model)
    if b is not None:
        write_bias(model, lp.layer, np.asarray(b), RoundMode.STD_ROUND)  # as its int16 weights below
    axis = None
    if lp.layer.scale.ndim == 1 and lp.layer.scale.size > 1:
        axis = 0 if lp.layer.trans_b else 1
    s = _int16_weight_scale(w, lp.layer.scale, axis)
    q = quantize(w, s, 0, bits=16, narrow=True, round_mode=RoundMode.STD_ROUND, axis=axis)
    if axis is None:
        wq = q.astype(np.float32) * s
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        wq = q.astype(np.float32) * s.reshape(shape)
    _replace_input_with_initializer(model, lp.layer.node, 1, wq, "int16_weight")
    for p in lp.outputs:
        _int16_point(model, p)


def _int16_weight_scale(w: np.ndarray, int8_scale: np.ndarray, axis: int | None) -> np.ndarray:
    """16-bit min/max scale of ``w`` (per channel along ``axis``), a power of two if ``int8_scale`` is."""
    pow2 = bool(np.all(np.frexp(np.asarray(int8_scale, np.float32))[0] == 0.5))
    settings = TensorSettings(bit_width=16, method="minmax", scale_type="power_of_two" if pow2 else "float",
                              per_channel=axis is not None, symmetric=True, signed=True, narrow_range=True,
                              round_mode=RoundMode.STD_ROUND, percentile=100.0)
    return weight_params("int16_weight", w, settings, axis).scale


def _int16_point(model: onnx.ModelProto, p: QuantPoint) -> None:
    mode = _point_mode(p)
    op = qdq.ensure_quantize_function(model, mode, "int16")
    scale = float(get_array(model, p.q.input[1])) / INT16_REFINE
    base = p.dq.output[0]
    sname, zname = f"{base}.int16_scale", f"{base}.int16_zp"
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(scale, np.float32), sname),
        numpy_helper.from_array(np.array(0, np.int16), zname),
    ])
    q_out, f_out = f"{base}.int16_q", f"{base}.int16_f"
    new_nodes = [
        helper.make_node(op, [p.q.input[0], sname, zname], [q_out], domain=qdq.DOMAIN, name=q_out),
        helper.make_node("Cast", [q_out], [f_out], to=TensorProto.FLOAT, name=f_out),
    ]
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n is p.dq or (n.name == p.dq.name and n.output == p.dq.output))
    for k, n in enumerate(new_nodes):
        model.graph.node.insert(idx + k, n)
    p.dq.op_type = "Mul"
    p.dq.domain = ""
    del p.dq.attribute[:]
    del p.dq.input[:]
    p.dq.input.extend([f_out, sname])


def apply_precisions(
    qmodel: onnx.ModelProto, precisions: dict[str, str], float_model: onnx.ModelProto | None = None,
    quantize_only: str | None = None,
) -> onnx.ModelProto:
    """A copy of ``qmodel`` with layers set to ``int16``/``float`` as given.

    ``quantize_only=NAME`` puts every layer but NAME in float, for the "quantize only this
    layer" measurement: NAME keeps its integer weights, its output pair and the quantize steps
    of its inputs, as a single accelerator layer between CPU layers would.
    """
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    lps = layer_points(out)
    if quantize_only is not None:
        precisions = {lp.name: "float" for lp in lps if lp.name != quantize_only}
    # a pair stays where an integer node writes or reads it: a float layer's output is still
    # quantized for an integer reader (the CPU -> accelerator boundary of ``keep_float``)
    prod = producers(out)
    integer = _integer_nodes(out, lps, precisions, prod)
    floats = {t.name: t for t in float_model.graph.initializer} if float_model is not None else {}
    inits = {t.name for t in out.graph.initializer}
    for lp in lps:  # float edits only rewire inputs, so ``prod`` stays valid for them
        if precisions.get(lp.name) == "float" and lp.layer is None:
            _set_float_constants(out, lp, floats, inits, prod)
        elif precisions.get(lp.name) == "float":
            _set_float_weights(out, lp, float_model)
    for lp in lps:
        if precisions.get(lp.name) == "int16":
            set_int16(out, lp, float_model)
    prod = producers(out)  # int16 edits add nodes
    cons = consumers(out)
    for p in activation_points(out):
        producer = prod.get(p.q.input[0])
        if not (producer is not None and node_key(producer) in integer
                or any(node_key(c) in integer for c in cons.get(p.dq.output[0], []))):
            bypass(p)
    return out


def _integer_nodes(model: onnx.ModelProto, lps: list[LayerPoints], precisions: dict[str, str],
                   prod: dict[str, onnx.NodeProto]) -> set[str]:
    """Keys (:func:`~npuflow.quant.plan.node_key`) of the nodes that compute on integers once
    ``precisions`` apply: the nodes of every int8/int16 layer (:func:`_layer_nodes`), with the
    quantizer's rules for data-movement ops applied.  Deciding pairs from these nodes makes a
    search score deployable models whose ``keep_float`` config reproduces the score."""
    out: set[str] = set()
    for name, nodes in _layer_nodes(model, lps, prod).items():
        if precisions.get(name, "int8") != "float":
            out |= nodes
    _drop_float_followers(model, out, prod)
    return out


def _layer_nodes(model: onnx.ModelProto, lps: list[LayerPoints],
                 prod: dict[str, onnx.NodeProto]) -> dict[str, set[str]]:
    """Layer name -> keys of the nodes it computes: its own node and, walking back from its
    output pairs to the dequantized tensors it reads, the nodes fused into it (a ReLU, a
    hard-swish chain).  A pair the exporter marked as written by a float producer
    (:data:`npuflow.qdq.FLOAT_PRODUCER_DOC`) leads to no node: that producer runs on the CPU."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, set[str]] = {}
    for lp in lps:
        nodes = out.setdefault(lp.name, set())
        if lp.layer is not None:
            nodes.add(node_key(lp.layer.node))
        stack = [prod.get(p.q.input[0]) for p in lp.outputs if p.q.doc_string != qdq.FLOAT_PRODUCER_DOC]
        while stack:
            n = stack.pop()
            if n is None or node_key(n) in nodes or n.op_type not in QUANTIZED_OPS:
                continue
            nodes.add(node_key(n))
            stack.extend(prod.get(t) for t in n.input if t and t not in inits)
    return out


def float_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Weightless layer -> the layers to put in float with it (itself first) so that its
    output's quantize step goes: the layers reading that output.  Alone in float such a layer
    changes nothing, since its integer readers need the quantize step (:func:`apply_precisions`)."""
    lps = layer_points(model)
    owner = {key: name for name, keys in _layer_nodes(model, lps, producers(model)).items() for key in keys}
    cons = consumers(model)
    groups = {}
    for lp in lps:
        if lp.layer is not None:
            continue
        readers = {owner[node_key(c)] for p in lp.outputs for c in cons.get(p.dq.output[0], [])
                   if node_key(c) in owner} - {lp.name}
        if readers:
            groups[lp.name] = [lp.name, *sorted(readers)]
    return groups


def _drop_float_followers(model: onnx.ModelProto, integer: set[str], prod: dict[str, onnx.NodeProto]) -> None:
    """Apply the quantizer's rules for data-movement ops to ``integer``, in place.

    They follow their input (:data:`npuflow.operators.FOLLOWERS`): a Reshape behind a layer now
    in float is float too.  On float-scale targets they also stay float when no integer node reads
    their output (the quantizer's float tail).
    """
    def source(t: str) -> onnx.NodeProto | None:
        n = prod.get(t)
        if n is not None and n.op_type == "DequantizeLinear":
            q = prod.get(n.input[0])
            if q is None or q.doc_string == qdq.FLOAT_PRODUCER_DOC:
                return None
            n = prod.get(q.input[0])
        return n

    for n in model.graph.node:
        if node_key(n) in integer and n.op_type in FOLLOWERS:
            src = source(n.input[0])
            if src is None or node_key(src) not in integer:
                integer.discard(node_key(n))
    if {p.key: p.value for p in model.metadata_props}.get("npuflow.scale_type") != "float":
        return
    cons = consumers(model)

    def readers(t: str) -> list[onnx.NodeProto]:
        out = []
        for c in cons.get(t, []):
            if _is_quantize(c):
                out += [r for dq in cons.get(c.output[0], []) for r in cons.get(dq.output[0], [])]
            else:
                out.append(c)
        return out

    changed = True
    while changed:
        changed = False
        for n in model.graph.node:
            key = node_key(n)
            if key in integer and n.op_type in DATA_MOVEMENT:
                if not any(node_key(r) in integer for o in n.output if o for r in readers(o)):
                    integer.discard(key)
                    changed = True
