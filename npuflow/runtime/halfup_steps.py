"""The quantizer's half-up / half-down quantize steps in a CPU subgraph, written shorter for ONNX Runtime.

A DPU target's CPU subgraph quantizes with the rounding of its activations (``half_up``), which ONNX's
``QuantizeLinear`` (ties to even) has not: the quantizer writes a local function
(``qdq.make_quantize_function``) that ONNX Runtime inlines as eight nodes (``Div, Floor, Sub,
GreaterOrEqual, Cast, Add, Clip, Cast``) where a plain QDQ model has one ``QuantizeLinear``.  A frame's
CPU time tracks its node count (issue 19: ~0.3 us a small node; ten such steps in the EfficientFormer-style
net on B4096), so the session a CPU subgraph runs in computes each step whose scale and zero point are
constants as the four nodes of ``numerics.rounding_as_quantize_linear``, with the same codes.  The QDQ
model the quantizer writes keeps its function (its contract); only the runtime's session changes.

A fused run rounds half up in float32 by doubling (``fused_graph.round_float``: ``Floor(2v) * 0.5 -> Ceil ->
Clip``), as its float codes need; where those codes only leave as 8-bit integers (``Cast``, after an
``Add`` of the zero point or of a byte offset), :func:`integer_quantize_steps` writes the same four-node
form's tail instead (EfficientFormer-style net on B4096: its input and its pooling's output, 5 nodes less).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from ..graph import GraphView, unique_name, with_nodes
from ..qdq import DOMAIN, parse_function_name

#: The output types of the function a ``QuantizeLinear`` (opset 10 and later) can write.
_QUANTIZE_LINEAR_TYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def shorter_quantize_steps(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each call of the quantizer's ``half_up`` / ``half_down`` quantize function into 8
    bits whose scale (positive, normal, every element; its half normal too) and zero point (one integer
    in range) are initialisers replaced by ``Div(x, scale / 2) -> Floor|Ceil -> Add(+-0.5) ->
    QuantizeLinear(scale 2, zero point)``; a function no node calls any more is dropped.  Returns
    ``model`` itself where no call qualifies (any other call, a computed scale, keeps its function)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    reserved: set[str] = set()  # names handed out for nodes not yet in the graph
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    for k, node in enumerate(graph.node):
        found = _rule(node, inits)
        if found is None:
            nodes.append(node)
            continue
        (inner, offset), half_scale, zero_point = found
        stem = unique_name(graph, f"{node.output[0]}_q", reserved)
        names = {s: unique_name(graph, f"{stem}_{s}", reserved) for s in ("hs", "v2", "n", "off", "n2", "two", "zp")}
        added += [numpy_helper.from_array(half_scale, names["hs"]),
                  numpy_helper.from_array(np.array(offset, np.float32), names["off"]),
                  numpy_helper.from_array(np.array(2.0, np.float32), names["two"]),
                  numpy_helper.from_array(zero_point, names["zp"])]
        nodes += [helper.make_node("Div", [node.input[0], names["hs"]], [names["v2"]], name=f"{stem}_div"),
                  helper.make_node(inner, [names["v2"]], [names["n"]], name=f"{stem}_{inner.lower()}"),
                  helper.make_node("Add", [names["n"], names["off"]], [names["n2"]], name=f"{stem}_add"),
                  helper.make_node("QuantizeLinear", [names["n2"], names["two"], names["zp"]], [node.output[0]],
                                   name=f"{stem}_quantize")]
    if not added:
        return model
    out = with_nodes(model, nodes, added)
    called = {(n.domain, n.op_type) for n in nodes}
    kept = [f for f in out.functions if (f.domain, f.name) in called]
    del out.functions[:]
    out.functions.extend(kept)
    return out


def _rule(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]
          ) -> tuple[tuple[str, float], np.ndarray, np.ndarray] | None:
    """For a call of the quantize function that :func:`shorter_quantize_steps` rewrites: the rounding's
    ``(INNER, offset)``, half the scale and the zero point in the output's type; else None."""
    parsed = parse_function_name(node.op_type) if node.domain == DOMAIN else None
    if parsed is None or len(node.input) != 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    mode, dtype = parsed
    rule = nm.rounding_as_quantize_linear(mode)
    if rule is None or dtype not in _QUANTIZE_LINEAR_TYPES:
        return None
    scale = numpy_helper.to_array(inits[node.input[1]])
    zero = numpy_helper.to_array(inits[node.input[2]])
    tiny = np.finfo(np.float32).tiny
    if scale.dtype != np.float32 or not np.all(np.isfinite(scale) & (scale >= 2 * tiny)) or zero.size != 1:
        return None  # half the scale subnormal: x / (scale/2) might not be 2 * (x / scale)
    qmin, qmax = nm.qrange(8, dtype == "int8")
    z = float(zero.reshape(()))
    if not z.is_integer() or not qmin <= z <= qmax:
        return None
    out_type = helper.tensor_dtype_to_np_dtype(_QUANTIZE_LINEAR_TYPES[dtype])
    return rule, (scale * np.float32(0.5)).astype(np.float32), np.array(int(z), out_type)


def integer_quantize_steps(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a fused run's graph) with each ``INNER(d) -> Mul(0.5) -> OUTER -> Clip(lo, hi) [-> Add(c)] ->
    Cast(int8|uint8)`` whose ``(INNER, OUTER)`` is ``numerics.rounding_by_doubling``'s and whose clip is the
    cast type's range less ``c`` written as ``INNER(d) -> Add(+-0.5) -> QuantizeLinear(2, c)``, the form of
    ``numerics.rounding_as_quantize_linear`` on the same ``INNER(d)``: it rounds ``INNER(d) / 2`` as
    ``OUTER(INNER(d) * 0.5)`` does, its zero point ``c`` adds what the ``Add`` added, and its saturation to
    the type's range is the clip moved by ``c`` (an integer, so the ``Cast`` rounded nothing).  The nodes
    between ``INNER`` and the ``Cast`` must have no other reader.  ``model`` itself where none is found."""
    view = GraphView(model)
    dropped: set[int] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}
    added: list[onnx.TensorProto] = []
    reserved: set[str] = set()
    for k, cast in enumerate(view.nodes):
        found = _integer_step(view, cast)
        if found is None:
            continue
        chain, inner_out, (offset, zp) = found
        stem = unique_name(model.graph, f"{cast.output[0]}_q", reserved)
        names = {s: unique_name(model.graph, f"{stem}_{s}", reserved) for s in ("off", "n2", "two", "zp")}
        added += [numpy_helper.from_array(np.array(offset, np.float32), names["off"]),
                  numpy_helper.from_array(np.array(2.0, np.float32), names["two"]),
                  numpy_helper.from_array(zp, names["zp"])]
        dropped.update(chain)
        replaced[k] = [helper.make_node("Add", [inner_out, names["off"]], [names["n2"]], name=f"{stem}_add"),
                       helper.make_node("QuantizeLinear", [names["n2"], names["two"], names["zp"]], list(cast.output),
                                        name=f"{stem}_quantize")]
    if not replaced:
        return model
    nodes = [new for k, node in enumerate(view.nodes)
             for new in replaced.get(k, [] if k in dropped else [node])]
    return with_nodes(model, nodes, added)


def _integer_step(view: GraphView, cast: onnx.NodeProto
                  ) -> tuple[list[int], str, tuple[float, np.ndarray]] | None:
    """For a ``Cast`` that :func:`integer_quantize_steps` rewrites: the nodes it replaces besides the cast, the
    ``INNER`` node's output and ``(offset, zero point in the cast's type)``; else None."""
    to = next((a.i for a in cast.attribute if a.name == "to"), None)
    if cast.op_type != "Cast" or to not in _QUANTIZE_LINEAR_TYPES.values():
        return None
    chain: list[int] = []

    def single(tensor: str, op: str) -> onnx.NodeProto | None:
        """The ``op`` node making ``tensor``, which nothing else reads."""
        node = view.producer_node(tensor)
        if node is None or node.op_type != op or node.domain not in ("", "ai.onnx") \
                or view.only_consumer(tensor) is None:
            return None
        chain.append(view.position(node))
        return node

    def scalar(tensor: str) -> float | None:
        t = view.inits.get(tensor)
        return None if t is None or t.data_location == TensorProto.EXTERNAL or t.data_type != TensorProto.FLOAT \
            else view.scalar(tensor)

    node, c = view.producer_node(cast.input[0]), 0.0
    if node is not None and node.op_type == "Add":
        c = scalar(node.input[1])
        node = single(cast.input[0], "Add") if c is not None and c.is_integer() else None
        if node is None:
            return None
    clip = single(node.input[0] if node.op_type == "Add" else cast.input[0], "Clip") if node is not None else None
    if clip is None or len(clip.input) != 3:
        return None
    lo, hi = scalar(clip.input[1]), scalar(clip.input[2])
    qmin, qmax = nm.qrange(8, to == TensorProto.INT8)
    if lo is None or hi is None or (lo + c, hi + c) != (qmin, qmax):
        return None
    outer_node = view.producer_node(clip.input[0])
    mode = next((m for m in (nm.RoundMode.HALF_UP, nm.RoundMode.HALF_DOWN)
                 if outer_node is not None and outer_node.op_type == nm.rounding_by_doubling(m)[1]), None)
    if mode is None or single(clip.input[0], outer_node.op_type) is None:
        return None
    inner_op, offset = nm.rounding_as_quantize_linear(mode)
    half = single(outer_node.input[0], "Mul")
    inner = view.producer_node(half.input[0]) if half is not None and scalar(half.input[1]) == 0.5 else None
    if inner is None or inner.op_type != inner_op or inner.domain not in ("", "ai.onnx"):
        return None
    zp = np.array(int(c), helper.tensor_dtype_to_np_dtype(to))
    return chain, inner.output[0], (offset, zp)
