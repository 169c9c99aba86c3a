"""Fake quantization in PyTorch that computes exactly :mod:`npuflow.numerics`.

A shared foundation next to ``numerics.py`` (its torch twin), imported only where torch is in use:
the torch front (``npuflow.torch``) and the quantizer's torch-based reconstruction
(``quant/algorithms/block_recon.py``), so neither stage imports the other for it.

The QAT forward must produce the integers the chip produces, so the functions here follow
:func:`npuflow.numerics.quantize` step by step rather than calling ``torch.fake_quantize_*``
(which always rounds half to even and rounds in float32):

* the division ``x / scale`` is done in float32 (as numerics and ONNX Runtime do);
* the tie rule is :func:`npuflow.numerics.round_values` itself, called with ``xp=torch``: this
  module holds no rounding of its own;
* the zero point is added, the result is clipped to the code range, and dequantization is
  ``(q - zero_point) * scale`` in float32.

Tests compare these functions with ``numerics.quantize`` bit for bit on random values and on
exact ties.  :class:`FakeQuantSTE` adds straight-through gradients: the input gradient passes
where the value was inside the code range and is zero where it was clipped; the scale gradient
is the LSQ/TQT one, ``round(x/s) - x/s`` inside the range and the clipped code outside.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def quantize_codes(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec,
    axis: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unclipped, clipped)`` integer codes of ``x`` as float64 tensors (numerics.quantize)."""
    s = _broadcast(scale.detach().to(torch.float32), x.dim(), axis)
    zp = _broadcast(zero_point.detach().to(torch.float64), x.dim(), axis)
    v = (x.detach().to(torch.float32) / s).to(torch.float64)
    unclipped = round_values(v, spec.round_mode, xp=torch) + zp
    return unclipped, unclipped.clamp(spec.qmin, spec.qmax)


def dequantize_codes(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None
) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32 (numerics.dequantize / ``DequantizeLinear``)."""
    s = _broadcast(scale.detach().to(torch.float32), q.dim(), axis)
    zp = _broadcast(zero_point.detach().to(torch.float32), q.dim(), axis)
    return (q.to(torch.float32) - zp) * s


def _reduce_to(grad: torch.Tensor, like: torch.Tensor, axis: int | None) -> torch.Tensor:
    if like.dim() == 0 or like.numel() == 1:
        return grad.sum().reshape(like.shape)
    dims = [d for d in range(grad.dim()) if d != axis]
    return grad.sum(dim=dims).reshape(like.shape)


class FakeQuantSTE(torch.autograd.Function):
    """``dequantize(quantize(x))`` with straight-through gradients for ``x`` and ``scale``."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, spec: QuantSpec, axis):  # type: ignore[override]
        unclipped, q = quantize_codes(x, scale, zero_point, spec, axis)
        out = dequantize_codes(q, scale, zero_point, axis)
        ctx.spec, ctx.axis = spec, axis
        ctx.save_for_backward(x, scale, zero_point, unclipped)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, zero_point, unclipped = ctx.saved_tensors
        spec, axis = ctx.spec, ctx.axis
        inside = (unclipped >= spec.qmin) & (unclipped <= spec.qmax)
        grad_x = grad * inside.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            s = _broadcast(scale.to(torch.float32), x.dim(), axis)
            zp = _broadcast(zero_point.to(torch.float32), x.dim(), axis)
            q = unclipped.clamp(spec.qmin, spec.qmax).to(torch.float32)
            d_out_d_s = torch.where(inside, (q - zp) - x.to(torch.float32) / s, q - zp)
            grad_s = _reduce_to(grad.to(torch.float32) * d_out_d_s, scale, axis).to(scale.dtype)
        return grad_x, grad_s, None, None, None


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, spec: QuantSpec, axis: int | None = None,
) -> torch.Tensor:
    """Differentiable fake quantization equal to ``numerics.fake_quantize`` bit for bit."""
    if not isinstance(zero_point, torch.Tensor):
        zero_point = torch.tensor(zero_point, dtype=torch.int32)
    return FakeQuantSTE.apply(x, scale, zero_point, spec, axis)


def round_ste(v: torch.Tensor, mode: RoundMode | str) -> torch.Tensor:
    """``round_values(v, mode)`` forward, identity backward: discretises a learnable log2 threshold."""
    return v + (round_values(v.detach(), mode, xp=torch) - v).detach()


def scale_grad(v: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    return v * factor + (v - v * factor).detach()
