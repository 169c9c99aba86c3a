"""Reading and rewriting the quantized weights and biases of a QDQ model.

The algorithms that run after quantization (bias correction, AdaRound, AdaQuant) change integer
weights and float/int32 biases, never scales, so the rest of the QDQ model stays valid.  Two
weight layouts are understood, as both appear in QDQ files:

* ``int initializer -> DequantizeLinear -> layer`` (weights stored as integers);
* ``float initializer -> Quantize (QuantizeLinear or an ``ai.npuflow`` rounding function) ->
  DequantizeLinear -> layer``: the codes are the quantize step's own (its tie rule is read from
  the node: ``QuantizeLinear`` rounds half to even, ``Quantize_<mode>_<dtype>`` with ``mode``), and
  new codes replace the float initializer by ``q * scale``, which every rounding rule maps back
  to exactly ``q``.

Biases are a float initializer or ``int32 initializer -> DequantizeLinear``; an int32 bias has no
quantize step to name its tie rule, so :func:`write_bias` takes it from the caller (the target's
bias rule, the one the export quantized it with).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ...numerics import ONNX_ROUND_MODE, RoundMode, qrange, quantize
from ...qdq import parse_function_name
from ...graph import GraphView, attr, get_array, initializers, set_array
from ...operators import WEIGHTED_OPS
from .layers import to_rows, to_stored


@dataclass
class QuantizedLayer:
    """A Conv/ConvTranspose/Gemm/MatMul of a QDQ model whose weight comes from a DequantizeLinear."""

    node: onnx.NodeProto
    groups: int
    trans_b: bool            # weight stored as (Cout, Cin...) (True) or (Cin, Cout) (False)
    q_name: str | None       # integer initializer holding the codes
    float_name: str | None   # float initializer behind a Quantize step
    scale: np.ndarray        # per tensor (shape ()) or per output channel (Cout,)
    zero_point: np.ndarray
    bits: int
    signed: bool
    bias_name: str | None    # float bias initializer, or int32 codes behind a DQ
    bias_scale: np.ndarray | None  # scale of an int32 bias, None for a float bias
    round_mode: RoundMode | None  # tie rule of the weight's quantize step (None: integer codes)

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    def rows(self, stored: np.ndarray) -> np.ndarray:
        """A stored weight array in the ``(Cout, Cin/groups, *kernel)`` layout (:func:`.layers.to_rows`)."""
        return to_rows(stored, self.trans_b, self.node.op_type == "ConvTranspose", self.groups)

    def stored(self, rows: np.ndarray) -> np.ndarray:
        return to_stored(rows, self.trans_b, self.node.op_type == "ConvTranspose", self.groups)

    def qlimits(self) -> tuple[int, int]:
        lo, hi = qrange(self.bits, self.signed)
        return lo, hi


def _quantize_mode(node: onnx.NodeProto) -> RoundMode | None:
    """Tie rule of a quantize step: ``QuantizeLinear``'s, or the one an ``ai.npuflow`` function
    is named for; ``None`` for any other node (its rounding is unknown, so its codes are too)."""
    if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx"):
        return ONNX_ROUND_MODE
    parsed = parse_function_name(node.op_type)
    return parsed[0] if parsed is not None else None


def _dq_source(model, name, prods, inits):
    """``(dq_node, int_initializer | None, float_initializer | None, quantize tie rule | None)``
    behind tensor ``name``."""
    dq = prods.producer_node(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    src = dq.input[0]
    if src in inits:
        return dq, src, None, None
    q = prods.producer_node(src)
    if q is not None and q.input[0] in inits and (mode := _quantize_mode(q)) is not None:
        return dq, None, q.input[0], mode
    return None


def quantized_layers(model: onnx.ModelProto) -> list[QuantizedLayer]:
    """Every weight layer of a QDQ model whose per-tensor or per-output-channel weight we can edit."""
    prods = GraphView(model)
    inits = initializers(model)
    out = []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2:
            continue
        conv = n.op_type in ("Conv", "ConvTranspose")
        if not conv and attr(n, "transA", 0):
            continue
        src = _dq_source(model, n.input[1], prods, inits)
        if src is None:
            continue
        dq, q_name, float_name, round_mode = src
        scale = get_array(model, dq.input[1]).astype(np.float32)
        zp = get_array(model, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
        trans_b = conv or (n.op_type == "Gemm" and bool(attr(n, "transB", 0)))
        groups = int(attr(n, "group", 1)) if conv else 1
        if scale.ndim == 1 and scale.size > 1:
            axis = attr(dq, "axis", 1)
            stored_ndim = len(inits[q_name or float_name].dims)
            axis = axis % stored_ndim
            # per output channel only: a ConvTranspose's output channels are its axis 1, and only
            # without groups (with them, axis 1 holds one group's Cout/g)
            out_axis = 1 if n.op_type == "ConvTranspose" or not trans_b else 0
            if axis != out_axis or (n.op_type == "ConvTranspose" and groups != 1):
                continue
        if q_name is not None:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(inits[q_name].data_type)
        else:
            dtype = zp.dtype
        info = np.iinfo(dtype)
        bias_name, bias_scale = None, None
        if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2]:
            if n.input[2] in inits:
                bias_name = n.input[2]
            else:
                bsrc = _dq_source(model, n.input[2], prods, inits)
                if bsrc is not None and bsrc[1] is not None:
                    bias_name = bsrc[1]
                    bias_scale = get_array(model, bsrc[0].input[1]).astype(np.float32)
        out.append(QuantizedLayer(
            n, groups, trans_b, q_name, float_name,
            scale, zp, info.bits, info.min < 0, bias_name, bias_scale, round_mode,
        ))
    return out


def scale_rows(layer: QuantizedLayer, w_shape: tuple[int, ...]) -> np.ndarray:
    """The weight scale broadcast to ``(Cout, 1, ...)`` of the ``(Cout, ...)`` layout."""
    s = layer.scale.reshape(-1)
    if s.size == 1:
        return np.full((w_shape[0],) + (1,) * (len(w_shape) - 1), s[0], np.float32)
    return s.reshape((-1,) + (1,) * (len(w_shape) - 1)).astype(np.float32)


def read_codes(model: onnx.ModelProto, layer: QuantizedLayer) -> np.ndarray:
    """Integer weight codes in the ``(Cout, Cin/groups, *kernel)`` layout (as float64).

    Float weights are quantized with the tie rule of their own quantize step (the model's, so
    no caller can name another): the codes ONNX Runtime computes for the model."""
    if layer.q_name is not None:
        q = layer.rows(get_array(model, layer.q_name).astype(np.float64))
        return q - _zp_rows(layer, q.shape)
    w = layer.rows(get_array(model, layer.float_name).astype(np.float32))
    s = scale_rows(layer, w.shape)
    lo, hi = layer.qlimits()
    q = quantize(w, s, 0, bits=32, round_mode=layer.round_mode).astype(np.float64)
    return np.clip(q, lo, hi)


def code_limits(layer: QuantizedLayer, codes: np.ndarray) -> tuple[int, int]:
    """The layer's code range; narrow (most negative code unused) when the quantizer left
    ``codes`` so, which a learned rounding must keep."""
    lo, hi = layer.qlimits()
    if lo == -(2 ** (layer.bits - 1)) and codes.min() > lo:
        lo += 1
    return lo, hi


def _zp_rows(layer: QuantizedLayer, rows_shape) -> np.ndarray:
    """The zero point broadcast to the ``(Cout, ...)`` layout."""
    zp = layer.zero_point.astype(np.float64).reshape(-1)
    if zp.size == 1:
        return zp[0]
    return zp.reshape((-1,) + (1,) * (len(rows_shape) - 1))


def dequantized_weight(model: onnx.ModelProto, layer: QuantizedLayer) -> np.ndarray:
    q = read_codes(model, layer)
    return (q * scale_rows(layer, q.shape)).astype(np.float32)


def write_codes(model: onnx.ModelProto, layer: QuantizedLayer, q: np.ndarray) -> None:
    """Store new integer codes (``(Cout, ...)`` layout, zero point not included).

    The codes are integers already (learned roundings choose them); a fraction is a caller's bug,
    refused rather than rounded here with some tie rule."""
    q = np.asarray(q, dtype=np.float64)
    if not np.all(np.isfinite(q) & (q == np.trunc(q))):
        raise ValueError(f"weight codes of {layer.name} are not all integers")
    lo, hi = layer.qlimits()
    q = np.clip(q, lo, hi)
    if layer.q_name is not None:
        set_array(model, layer.q_name, layer.stored(q + _zp_rows(layer, q.shape)))
    else:
        w = (q * scale_rows(layer, q.shape)).astype(np.float32)
        set_array(model, layer.float_name, layer.stored(w))


def read_bias(model: onnx.ModelProto, layer: QuantizedLayer, cout: int) -> np.ndarray:
    if layer.bias_name is None:
        return np.zeros(cout, np.float32)
    b = get_array(model, layer.bias_name).reshape(-1)
    if layer.bias_scale is not None:
        return (b.astype(np.float64) * layer.bias_scale.astype(np.float64)).astype(np.float32)
    return b.astype(np.float32)


def write_bias(model: onnx.ModelProto, layer: QuantizedLayer, b: np.ndarray, round_mode: RoundMode | str) -> bool:
    """Store a new bias; ``False`` when the layer has no bias input to hold it.

    An int32 bias is quantized as the export quantized it (:func:`npuflow.quant.params.bias_params`:
    float32 division by its scale, ``round_mode`` - the target's bias rule - saturated to int32),
    so a corrected bias lands where the first export would have put the same value."""
    if layer.bias_name is None:
        return False
    if layer.bias_scale is not None:
        per_channel = layer.bias_scale.ndim == 1 and layer.bias_scale.size > 1
        q = quantize(np.asarray(b, np.float32).reshape(-1), layer.bias_scale, 0, bits=32, round_mode=round_mode,
                     axis=0 if per_channel else None)
        set_array(model, layer.bias_name, q)
    else:
        set_array(model, layer.bias_name, b)
    return True
