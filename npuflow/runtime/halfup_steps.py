"""The quantizer's half-up / half-down quantize steps in a CPU subgraph, written shorter for ONNX Runtime.

A DPU target's CPU subgraph quantizes with the rounding of its activations (``half_up``), which ONNX's
``QuantizeLinear`` (ties to even) has not: the quantizer writes a local function
(``qdq.make_quantize_function``) that ONNX Runtime inlines as eight nodes (``Div, Floor, Sub,
GreaterOrEqual, Cast, Add, Clip, Cast``) where a plain QDQ model has one ``QuantizeLinear``.  A frame's
CPU time tracks its node count (issue 19: ~0.3 us a small node; ten such steps in the EfficientFormer-style
net on B4096), so the session a CPU subgraph runs in computes each step whose scale and zero point are
constants as the four nodes of ``numerics.rounding_as_quantize_linear``, with the same codes.  The QDQ
model the quantizer writes keeps its function (its contract); only the runtime's session changes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from ..graph import unique_name
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
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(added)
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
