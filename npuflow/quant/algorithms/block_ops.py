"""The ONNX ops block reconstruction runs in torch (:mod:`.block_recon`'s runner, BRECQ's Fisher).

A block of the QDQ graph is learned by running its nodes in torch: :data:`OPS` and
:func:`supported` say which nodes can be (a piece holding any other node is solved layer by layer),
:func:`run_op` runs one in float32, :func:`fake_quantize32` is a quantize step with a
straight-through gradient, and :func:`quant_spec` / :func:`constant_value` read a step's
parameters and a constant input from the graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import NpuflowError
from ...graph import GraphView, attr
from ...numerics import ONNX_ROUND_MODE, RoundMode, dequantize, round_values
from ...qdq import parse_function_name

#: Ops the torch runner executes (besides the quantize functions); a piece holding any other op
#: is solved layer by layer.
OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Add", "Sub", "Mul", "Div", "Pad", "GlobalAveragePool", "AveragePool", "Resize", "Reshape", "Flatten", "Concat", "Identity",
    "QuantizeLinear", "DequantizeLinear",
})

#: The weight layers a block learns the rounding of.
LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def supported(node: onnx.NodeProto) -> bool:
    if node.domain not in ("", "ai.onnx") and parse_function_name(node.op_type) is None:
        return False
    if node.domain in ("", "ai.onnx") and node.op_type not in OPS:
        return False
    if node.op_type == "Conv" and attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    if node.op_type == "Pad" and attr(node, "mode", b"constant") not in (b"constant", "constant"):
        return False
    if node.op_type == "AveragePool":
        pads = list(attr(node, "pads", []))
        if attr(node, "ceil_mode", 0) or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
                or pads[:len(pads) // 2] != pads[len(pads) // 2:] or len(attr(node, "kernel_shape", [])) != 2:
            return False
    if node.op_type == "Resize":
        # nearest, floor of the asymmetric source position, with the scales given: an integer
        # upsampling is torch's nearest interpolation exactly
        return (attr(node, "mode", b"nearest") in (b"nearest", "nearest")
                and attr(node, "coordinate_transformation_mode", b"half_pixel") in (b"asymmetric", "asymmetric")
                and attr(node, "nearest_mode", b"round_prefer_floor") in (b"floor", "floor")
                and len(node.input) == 3 and bool(node.input[2]))
    return True


def fake_quantize32(x, scale, zero_point, spec, axis: int | None):
    """``numerics.fake_quantize`` in float32 with a straight-through gradient inside the code range.

    :func:`npuflow.fake_quant.fake_quantize` adds the zero point and clips in float64 so
    that it is exact for any code width; for codes of 16 bits or fewer float32 is exact too (every
    code and zero point is a float32 integer, and :func:`npuflow.numerics.round_values` rounds
    float32 exactly), and the block's elementwise steps, not its convolutions, are what a step
    costs (EfficientNet-Lite0's 112x112 blocks: 3x faster).  A test compares both bit for bit.
    """
    import torch

    if spec.bits > 16:
        raise ValueError(f"float32 fake quantization is exact up to 16 bits, not {spec.bits}")
    shape = [1] * x.dim()
    if axis is not None and scale.dim() == 1:
        shape[axis] = -1
    s = scale.to(torch.float32).reshape(shape or scale.shape) if axis is not None else scale.to(torch.float32)
    zp = zero_point.to(torch.float32)
    zp = zp.reshape(shape) if axis is not None and zp.dim() == 1 else zp
    r = round_values(x.detach() / s, spec.round_mode, xp=torch) + zp
    inside = (r >= spec.qmin) & (r <= spec.qmax)
    out = (r.clamp(spec.qmin, spec.qmax) - zp) * s
    return out + (x - x.detach()) * inside


def torch_abs_pow(t, beta: float):
    import torch

    return torch.abs(t) ** beta


def constant_value(t: str, inits: dict, made_by: GraphView) -> np.ndarray | None:
    if t in inits:
        return numpy_helper.to_array(inits[t])
    n = made_by.producer_node(t)
    if n is None:
        return None
    if n.op_type == "Constant":
        return numpy_helper.to_array(attr(n, "value"))
    if n.op_type == "DequantizeLinear" and n.input[0] in inits:
        q = numpy_helper.to_array(inits[n.input[0]])
        s = numpy_helper.to_array(inits[n.input[1]])
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] else 0
        axis = attr(n, "axis", 1) if np.ndim(s) == 1 and np.size(s) > 1 else None
        return dequantize(q, s, zp, axis=axis)
    return None


def quant_spec(n: onnx.NodeProto, inits: dict):
    """``(QuantSpec, axis)`` of a quantize step (``QuantizeLinear`` or an ``ai.npuflow`` function)."""
    from ...fake_quant import QuantSpec

    parsed = parse_function_name(n.op_type) if n.domain not in ("", "ai.onnx") else None
    if parsed is not None:
        mode, dtype = parsed
    elif n.op_type == "QuantizeLinear":
        mode = ONNX_ROUND_MODE
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        dtype = "uint8" if zp is None else onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name
    else:
        return None
    info = np.iinfo(np.dtype(dtype))
    s = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
    axis = attr(n, "axis", 1) if s is not None and s.ndim == 1 and s.size > 1 else None
    return QuantSpec(info.bits, info.min < 0, False, RoundMode(mode)), axis


def run_op(n: onnx.NodeProto, xs: list):
    """One ONNX op in torch (float32, batch on dim 0)."""
    import torch
    import torch.nn.functional as F

    op = n.op_type
    if op == "Conv":
        x, w = xs[0], xs[1]
        k = w.dim() - 2
        pads = list(attr(n, "pads", [0] * 2 * k))
        strides, dil = list(attr(n, "strides", [1] * k)), list(attr(n, "dilations", [1] * k))
        if pads[:k] != pads[k:]:
            x = F.pad(x, [p for d in reversed(range(k)) for p in (pads[d], pads[d + k])])
            pads = [0] * 2 * k
        conv = F.conv1d if k == 1 else F.conv2d
        return conv(x, w, xs[2] if len(xs) > 2 else None, strides, pads[:k], dil, int(attr(n, "group", 1)))
    if op == "Gemm":
        a, b = xs[0], xs[1]
        a = a.T if attr(n, "transA", 0) else a
        b = b.T if attr(n, "transB", 0) else b
        y = attr(n, "alpha", 1.0) * (a @ b)
        return y + attr(n, "beta", 1.0) * xs[2] if len(xs) > 2 and xs[2] is not None else y
    if op == "MatMul":
        return torch.matmul(xs[0], xs[1])
    if op == "Clip":
        lo = xs[1] if len(xs) > 1 and xs[1] is not None else None
        hi = xs[2] if len(xs) > 2 and xs[2] is not None else None
        return torch.clamp(xs[0], None if lo is None else float(lo), None if hi is None else float(hi))
    if op == "Relu":
        return torch.relu(xs[0])
    if op == "LeakyRelu":
        return F.leaky_relu(xs[0], attr(n, "alpha", 0.01))
    if op == "Sigmoid":
        return torch.sigmoid(xs[0])
    if op == "HardSigmoid":
        return torch.clamp(attr(n, "alpha", 0.2) * xs[0] + attr(n, "beta", 0.5), 0, 1)
    if op == "HardSwish":
        return xs[0] * torch.clamp(xs[0] / 6 + 0.5, 0, 1)
    if op in ("Add", "Sub", "Mul", "Div"):
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](xs[0], xs[1])
    if op == "Pad":
        pads = [int(p) for p in xs[1].tolist()]
        k = len(pads) // 2
        value = float(xs[2]) if len(xs) > 2 and xs[2] is not None else 0.0
        return F.pad(xs[0], [p for d in reversed(range(k)) for p in (pads[d], pads[d + k])], value=value)
    if op == "AveragePool":
        pads = list(attr(n, "pads", [0, 0, 0, 0]))
        return F.avg_pool2d(xs[0], list(attr(n, "kernel_shape")), list(attr(n, "strides", [1, 1])), pads[:2],
                            count_include_pad=bool(attr(n, "count_include_pad", 0)))
    if op == "Resize":
        scales = [float(v) for v in xs[2].tolist()]
        if scales[:2] != [1.0, 1.0] or any(v != int(v) or v < 1 for v in scales[2:]):
            raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where=f"fast_finetune node {n.name}",
                               reason=f"block reconstruction runs Resize at integer spatial scales only, not {scales}")
        return F.interpolate(xs[0], scale_factor=scales[2:], mode="nearest")
    if op == "GlobalAveragePool":
        return xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True)
    if op == "Reshape":
        shape = [int(d) for d in xs[1].tolist()]
        shape = [xs[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
        if shape and shape[0] == 1 and xs[0].shape[0] != 1:
            shape[0] = xs[0].shape[0]   # samples are batched on dim 0
        return xs[0].reshape(shape)
    if op == "Flatten":
        axis = attr(n, "axis", 1)
        return xs[0].reshape(int(np.prod(xs[0].shape[:axis])), -1)
    if op == "Concat":
        return torch.cat(xs, dim=attr(n, "axis"))
    if op == "Identity":
        return xs[0]
    raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where=f"fast_finetune node {n.name}",
                       reason=f"block reconstruction cannot run op {op}")
