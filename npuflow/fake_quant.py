"""Fake quantization in PyTorch that computes exactly :mod:`npuflow.numerics`.

A shared foundation next to ``numerics.py`` (its torch twin), imported only where torch is in use:
the torch front (``npuflow.torch``) and the quantizer's torch-based reconstruction
(``quant/algorithms/block_ops.py``), so neither stage imports the other for it.

The QAT forward must produce the integers the chip produces, so the functions here follow
:func:`npuflow.numerics.quantize` step by step rather than calling ``torch.fake_quantize_*``
(which always rounds half to even and rounds in float32):

* the division ``x / scale`` is done in float32 (as numerics and ONNX Runtime do);
* the tie rule is :func:`npuflow.numerics.round_values` itself, called with ``xp=torch``: this
  module holds no rounding of its own;
* the zero point is added, the result is clipped to the code range, and dequantization is
  ``(q - zero_point) * scale`` in float32.

Tests compare these functions with ``numerics.quantize`` bit for bit on random values and on
exact ties.  The training forward (:func:`fake_quantize`) does the same steps in float32 for
codes up to 16 bits (exact there, and half the memory traffic of float64: the fake quantization
was three quarters of a QAT step); a test holds it equal to the float64 :func:`quantize_codes` /
:func:`dequantize_codes`, gradients included.  :class:`FakeQuantSTE` adds straight-through gradients: the input gradient passes
where the value was inside the code range and is zero where it was clipped; the scale gradient
is the LSQ/TQT one, ``round(x/s) - x/s`` inside the range and the clipped code outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .numerics import RoundMode, qrange, round_values

#: The tie rule that turns a learned log2 threshold into a fix position (TQT): the nearest
#: integer, ties up.  The forward (:func:`round_ste`) and the exported constant
#: (:meth:`npuflow.torch.quantizer.FakeQuantizer._trained_scale`) both use it.
LOG2_THRESHOLD_ROUND_MODE = RoundMode.HALF_UP


@dataclass(frozen=True)
class QuantSpec:
    """Integer format of one quantizer: width, sign, narrow range and tie rule (all required: the
    tie rule is the target's, which :func:`npuflow.torch.config.formats_for` reads from the target data)."""

    bits: int
    signed: bool
    narrow: bool
    round_mode: RoundMode

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[1]


def _broadcast(t: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def _codes(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec, axis: int | None,
    work: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``numerics.quantize``'s steps: ``(scale, x / scale, zero point, unclipped, clipped codes)``,
    the float32 division, then the tie rule, zero point and saturation in ``work``."""
    s = _broadcast(scale.detach().to(torch.float32), x.dim(), axis)
    v = x.detach().to(torch.float32) / s
    zp = _broadcast(zero_point.detach().to(work), x.dim(), axis)
    unclipped = round_values(v.to(work), spec.round_mode, xp=torch) + zp
    return s, v, zp, unclipped, unclipped.clamp(spec.qmin, spec.qmax)


def quantize_codes(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec,
    axis: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unclipped, clipped)`` integer codes of ``x`` as float64 tensors (numerics.quantize)."""
    return _codes(x, scale, zero_point, spec, axis, torch.float64)[3:]


def dequantize_codes(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32 (numerics.dequantize / ``DequantizeLinear``)."""
    s = _broadcast(scale.detach().to(torch.float32), q.dim(), axis)
    zp = _broadcast(zero_point.detach().to(torch.float32), q.dim(), axis)
    return (q.to(torch.float32) - zp) * s


def _reduce_to(grad: torch.Tensor, shape: torch.Size, axis: int | None) -> torch.Tensor:
    """``grad`` summed to a scale's ``shape`` (one value, or one per channel of ``axis``)."""
    if len(shape) == 0 or shape.numel() == 1:
        return grad.sum().reshape(shape)
    dims = [d for d in range(grad.dim()) if d != axis]
    return grad.sum(dim=dims).reshape(shape)


#: Widest codes whose rounding, zero point and saturation are exact in float32: an integer-valued
#: float32 below 2**24 plus a zero point in the code range stays exact, and any larger value lies
#: outside the code range in float32 and float64 alike.  32-bit bias codes take the float64 path.
_FLOAT32_EXACT_BITS = 16


def _fake_quant_pass(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec, axis: int | None,
    scale_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(output, in-range mask, d output / d scale or None)`` in one pass of whole-tensor ops.

    In float32 for codes up to 16 bits: ``round_values`` keeps the float32 quotient's type and
    rounds it exactly, so the codes, the saturation and the float32 dequantization equal
    :func:`quantize_codes` / :func:`dequantize_codes` (float64) bit for bit at half the memory
    traffic.  ``d output / d scale`` is LSQ/TQT's: ``round(x/s) - x/s`` inside the range, the
    clipped code outside.
    """
    work = torch.float32 if spec.bits <= _FLOAT32_EXACT_BITS else torch.float64
    s, v, zp, unclipped, q = _codes(x, scale, zero_point, spec, axis, work)
    inside = q == unclipped  # NaN and values beyond the range (inf included) are clipped
    code = q.to(torch.float32) - zp.to(torch.float32)  # (q - zero_point), exact
    d_out_d_s = torch.where(inside, code - v, code) if scale_grad else None
    return (code * s).to(x.dtype), inside, d_out_d_s


class FakeQuantSTE(torch.autograd.Function):
    """``dequantize(quantize(x))`` with straight-through gradients for ``x`` and ``scale``.

    The forward keeps only what the backward needs -- the in-range mask and, when the scale
    trains, ``d output / d scale`` -- rather than the input and float64 codes.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, spec: QuantSpec, axis):  # type: ignore[override]
        out, inside, d_out_d_s = _fake_quant_pass(x, scale, zero_point, spec, axis, ctx.needs_input_grad[1])
        ctx.axis, ctx.scale_shape, ctx.scale_dtype = axis, scale.shape, scale.dtype
        ctx.save_for_backward(inside, d_out_d_s)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        inside, d_out_d_s = ctx.saved_tensors
        grad_x = grad * inside.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = _reduce_to(grad.to(torch.float32) * d_out_d_s, ctx.scale_shape, ctx.axis).to(ctx.scale_dtype)
        return grad_x, grad_s, None, None, None


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, spec: QuantSpec, axis: int | None = None,
) -> torch.Tensor:
    """Differentiable fake quantization equal to ``numerics.fake_quantize`` bit for bit (without
    autograd bookkeeping when gradients are off: evaluation, observers)."""
    if not isinstance(zero_point, torch.Tensor):
        zero_point = torch.tensor(zero_point, dtype=torch.int32)
    if not torch.is_grad_enabled():
        return _fake_quant_pass(x, scale, zero_point, spec, axis, scale_grad=False)[0]
    return FakeQuantSTE.apply(x, scale, zero_point, spec, axis)


def round_ste(v: torch.Tensor, mode: RoundMode | str) -> torch.Tensor:
    """``round_values(v, mode)`` forward, identity backward: discretises a learnable log2 threshold."""
    return v + (round_values(v.detach(), mode, xp=torch) - v).detach()


def tqt_scale(log2_threshold: torch.Tensor, bits: int) -> torch.Tensor:
    """TQT's power-of-two scale of a learnable log2 threshold: ``2 ** (round(log2 t) - (bits - 1))``
    forward (the fix position an export writes, :func:`tqt_scale_value`), straight-through
    backward, so ``d scale / d log2 t = scale * ln 2``.  QAT's quantizers and PTQ reconstruction's
    learned weight thresholds (``fast_finetune: {learn_threshold: true}``) share it."""
    return torch.exp2(round_ste(log2_threshold, LOG2_THRESHOLD_ROUND_MODE) - (bits - 1))


def tqt_scale_value(log2_threshold: np.ndarray, bits: int) -> np.ndarray:
    """:func:`tqt_scale`'s forward value in numpy (float32), outside autograd: the trained scale
    that is exported."""
    exps = round_values(np.asarray(log2_threshold), LOG2_THRESHOLD_ROUND_MODE) - (bits - 1)
    return np.asarray(np.ldexp(np.float32(1.0), np.asarray(exps).astype(np.int32)), dtype=np.float32)


def scale_grad(v: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return v * factor + (v - v * factor).detach()
