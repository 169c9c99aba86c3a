"""Layer geometry: what the cost model needs to know about one ONNX node.

The checker says *where* a node runs (device, subgraph, fused or not); this module says *how big*
it is: output pixels and channels, kernel, groups, weight and feature-map bytes, and which engine
of the accelerator does the work.  It reads the normalised model (static shapes everywhere), so a
float model and its quantized QDQ version give the same geometry: quantize/dequantize nodes cost
nothing and a weight behind a ``DequantizeLinear`` is still a weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from ..graph import attr_values
from ..model import tensor_shapes
from ..operators import Engine as OpEngine
from ..operators import is_depthwise, op_def

#: Engine names of :class:`npuflow.targets.spec.Engines` plus ``none`` (no work, no traffic).
CONV, DEPTHWISE, POOL, ELTWISE, MISC, NONE = "conv", "depthwise", "pool", "eltwise", "misc", "none"


@dataclass(frozen=True)
class Geometry:
    """Sizes of one layer in elements (batch included) and bytes at the target's data width.

    ``out_h``/``out_w`` are the output rows and columns the engine walks (an FC layer is one row
    of ``M`` pixels); ``in_c``/``out_c`` the channels per group; ``kernel_*`` the window each
    output pixel reads; ``macs`` the useful multiply-accumulates (compares/adds for pooling and
    eltwise), without any padding to the parallelism.
    """

    engine: str
    batch: int
    out_h: int
    out_w: int
    in_c: int
    out_c: int
    groups: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    in_w: int
    n_inputs: int
    macs: int
    weight_bytes: int
    in_bytes: int
    out_bytes: int


def _is_npuflow_qdq(node: onnx.NodeProto) -> bool:
    """npuflow's rounding-mode quantize functions (``npuflow.qdq``) cost what QuantizeLinear costs."""
    return node.domain == "ai.npuflow" and node.op_type.startswith(("Quantize_", "Dequantize_"))


def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers and everything computed from initializers only (e.g. DequantizeLinear(W))."""
    const = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # graph nodes are topologically sorted
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(o for o in node.output if o)
    return const


def _numel(shape: list[int] | None) -> int:
    return int(math.prod(shape)) if shape else 0


def _nchw(shape: list[int]) -> tuple[int, int, int, int]:
    """Batch, channels, rows, columns of an activation of any rank (N, C, spatial...)."""
    if len(shape) >= 4:
        return shape[0], shape[1], shape[2], int(math.prod(shape[3:]))
    if len(shape) == 3:
        return shape[0], shape[1], 1, shape[2]
    if len(shape) == 2:
        return 1, shape[1], 1, shape[0]
    return 1, _numel(shape) or 1, 1, 1


def geometry(
    node: onnx.NodeProto, shapes: dict[str, list[int]], const: set[str], elem_bytes: int = 1
) -> Geometry:
    """Geometry of ``node``; ``elem_bytes`` is the accelerator's data width (1 for INT8)."""
    acts = [i for i in node.input if i and i not in const]
    weights = [i for i in node.input if i and i in const]
    in_bytes = sum(_numel(shapes.get(i)) for i in acts) * elem_bytes
    out_shape = shapes.get(node.output[0]) if node.output else None
    out_bytes = _numel(out_shape) * elem_bytes
    a = attr_values(node)
    op = node.op_type
    d = op_def(op, node.domain)
    oshape = out_shape or [1]
    b, oc, oh, ow = _nchw(oshape)
    ishape = shapes.get(acts[0]) if acts else None
    _, ic, ih, iw = _nchw(ishape) if ishape else (1, 1, 1, 1)
    base = dict(batch=b, out_h=oh, out_w=ow, in_c=ic, out_c=oc, groups=1, kernel_h=1, kernel_w=1,
                stride_h=1, in_w=iw, n_inputs=max(len(acts), 1), in_bytes=in_bytes, out_bytes=out_bytes)

    if d.engine is OpEngine.CONV and len(node.input) > d.weight:
        w_name = node.input[d.weight]
        wshape = shapes.get(w_name) or [oc, ic, 1, 1]
        g = int(a.get("group", 1))
        kh = wshape[2] if len(wshape) > 2 else 1
        kw = int(math.prod(wshape[3:])) if len(wshape) > 3 else 1
        strides = a.get("strides", [1])
        if op == "ConvTranspose":  # each output pixel sees kernel/stride taps
            kh = max(1, math.ceil(kh / strides[0]))
            kw = max(1, math.ceil(kw / strides[-1]))
        cin_g, cout_g = max(ic // g, 1), max(oc // g, 1)
        depthwise = is_depthwise(g, ic)
        w_elems = _numel(wshape) if w_name in const else 0
        macs = b * oh * ow * oc * cin_g * kh * kw
        return Geometry(**{**base, "engine": DEPTHWISE if depthwise else CONV, "groups": g,
                           "in_c": cin_g, "out_c": cout_g, "kernel_h": kh, "kernel_w": kw,
                           "stride_h": int(strides[0]), "macs": macs,
                           "weight_bytes": w_elems * elem_bytes + 4 * oc})
    if d.engine is OpEngine.FC and len(node.input) > d.weight:
        # rows of the left operand are the "pixels"; K inputs; N outputs
        lhs = shapes.get(node.input[0]) or [1, 1]
        rhs = shapes.get(node.input[d.weight]) or [1, 1]
        trans_b = int(a.get("transB", 0))
        k = lhs[-1]
        n = rhs[-2] if trans_b else rhs[-1]
        rows = max(_numel(lhs) // max(k, 1), 1)
        w_elems = sum(_numel(shapes.get(w)) for w in weights)
        return Geometry(**{**base, "engine": CONV, "batch": 1, "out_h": 1, "out_w": rows,
                           "in_c": k, "out_c": n, "macs": rows * k * n,
                           "weight_bytes": w_elems * elem_bytes, "n_inputs": 1})
    if d.engine is OpEngine.POOL:
        k = a.get("kernel_shape", [1, 1])
        kh, kw = k[0], int(math.prod(k[1:])) if len(k) > 1 else 1
        return Geometry(**{**base, "engine": POOL, "in_c": oc, "kernel_h": kh, "kernel_w": kw,
                           "stride_h": int(a.get("strides", [1])[0]),
                           "macs": b * oh * ow * oc * kh * kw, "weight_bytes": 0})
    if d.engine is OpEngine.GLOBAL_POOL:
        # walks the input window once per output pixel: H rows x W columns
        return Geometry(**{**base, "engine": POOL, "out_h": max(ih, 1), "out_w": max(iw, 1),
                           "in_c": ic, "out_c": ic, "macs": b * ic * ih * iw, "weight_bytes": 0})
    if d.engine is OpEngine.ELTWISE:
        n = max(len(acts), 1)
        return Geometry(**{**base, "engine": ELTWISE, "in_c": oc, "n_inputs": n,
                           "macs": b * oh * ow * oc * max(n - 1, 1),
                           "weight_bytes": sum(_numel(shapes.get(w)) for w in weights) * elem_bytes})
    if d.engine in (OpEngine.NONE, OpEngine.ZERO_COPY) or _is_npuflow_qdq(node):
        return Geometry(**{**base, "engine": NONE, "macs": 0, "weight_bytes": 0,
                           "in_bytes": 0, "out_bytes": 0})
    # activations, resize, transpose, slice, pad, ...: data movement through the misc engine
    return Geometry(**{**base, "engine": MISC, "in_c": oc, "macs": 0, "weight_bytes": 0})


def node_name(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``<OpType>_<index>`` for unnamed nodes."""
    return node.name or f"{node.op_type}_{index}"


def model_geometry(model: onnx.ModelProto, elem_bytes: int = 1) -> dict[str, Geometry]:
    """Geometry of every node, keyed by :func:`node_name`."""
    shapes = tensor_shapes(model)
    const = constant_tensors(model)
    return {node_name(n, i): geometry(n, shapes, const, elem_bytes) for i, n in enumerate(model.graph.node)}
