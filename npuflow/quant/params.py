"""Quantization parameters of one tensor (:class:`TensorQuant`) and how they are chosen.

Activations get their parameters from calibration statistics (:mod:`.observers`,
:mod:`.thresholds`); weights and other constants from their values; biases from the scales of
the op's input and weight (``s_in * s_w``, int32).  Integer values are always produced by
:func:`npuflow.numerics.quantize`, so what is written into the model is the target arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import numerics
from .config import TensorSettings
from .observers import HistogramObserver, MinMaxObserver
from .thresholds import asymmetric_range, pow2_position, symmetric_threshold


@dataclass
class TensorQuant:
    """How one tensor is quantized (one entry of ``quant_info.json``)."""

    name: str
    kind: str  # input | activation | weight | bias | constant
    bits: int
    signed: bool
    narrow_range: bool
    round_mode: numerics.RoundMode
    scale: np.ndarray  # float32, 0-d (per tensor) or 1-d (per channel)
    zero_point: np.ndarray  # same shape, integer
    axis: int | None = None
    method: str = "minmax"
    threshold: float | list[float] | None = None
    group: int | None = None
    fix_pos: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(self.zero_point, dtype=np.int64)
        if self.fix_pos is None:
            fp = numerics.fix_pos_of(self.scale)
            self.fix_pos = fp if fp is not None and np.all(self.zero_point == 0) else None

    @property
    def storage_bits(self) -> int:
        """Bits of the stored integer type (int4 weights are stored in int8)."""
        return 8 if self.bits <= 8 else self.bits

    @property
    def dtype(self) -> str:
        """ONNX/numpy integer type name of the quantized tensor: int8, uint8, int16, uint16, int32."""
        return ("" if self.signed else "u") + f"int{self.storage_bits}"

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integers of ``x`` with this tensor's arithmetic (stored in :attr:`dtype`)."""
        q = numerics.quantize(x, self.scale, self.zero_point, bits=self.bits, signed=self.signed,
                              narrow=self.narrow_range, round_mode=self.round_mode,
                              axis=self.axis if self.scale.ndim == 1 else None)
        return q.astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return numerics.dequantize(q, self.scale, self.zero_point, axis=self.axis if self.scale.ndim == 1 else None)

    def to_json(self) -> dict:
        def plain(a):
            if a is None:
                return None
            a = np.asarray(a)
            return a.tolist() if a.ndim else a.item()

        return {
            "kind": self.kind, "bits": self.bits, "signed": self.signed, "narrow_range": self.narrow_range,
            "round_mode": numerics.RoundMode(self.round_mode).value,
            "scale": plain(self.scale), "zero_point": plain(self.zero_point), "axis": self.axis,
            "fix_pos": plain(self.fix_pos), "threshold": self.threshold, "method": self.method, "group": self.group,
        }


def from_range(name: str, kind: str, s: TensorSettings, lo: float, hi: float, *, method: str | None = None,
               fix_pos: int | None = None) -> TensorQuant:
    """Parameters covering ``[lo, hi]`` (symmetric: ``max(|lo|, |hi|)``) with settings ``s``."""
    bits = s.bit_width
    common = dict(name=name, kind=kind, bits=bits, signed=s.signed, narrow_range=s.narrow_range,
                  round_mode=s.round_mode, method=method or s.method)
    qmin, qmax = numerics.qrange(bits, s.signed, s.narrow_range)
    if lo == hi == 0.0 and fix_pos is None:
        # only zero (a zero constant operand, a dead activation): every scale holds it exactly, and
        # the unit scale keeps the shifts and multipliers of the ops reading it in range (the
        # smallest float32 scale made a 105-bit alignment shift in openWakeWord's mel model)
        lo, hi = -float(qmax), float(qmax)
    if s.scale_type == "power_of_two":
        if fix_pos is None:
            fix_pos = int(numerics.pow2_fix_pos(max(abs(lo), abs(hi)), bits))
        scale = numerics.pow2_scale(fix_pos)
        return TensorQuant(scale=scale, zero_point=0, threshold=float(scale) * qmax, **common)
    if s.symmetric:
        amax = max(abs(lo), abs(hi))
        top = qmax if s.signed else qmax
        scale = np.float32(max(amax, np.finfo(np.float32).tiny) / top)
        return TensorQuant(scale=scale, zero_point=0, threshold=float(amax), **common)
    scale, zp = numerics.asymmetric_params(lo, hi, bits, s.signed)
    return TensorQuant(scale=scale, zero_point=zp, threshold=[float(min(lo, 0.0)), float(max(hi, 0.0))], **common)


def activation_params(name: str, kind: str, s: TensorSettings, mm: MinMaxObserver,
                      hist: HistogramObserver | None) -> tuple[float, float, int | None]:
    """Calibrated range ``(lo, hi)`` (and fix position on power-of-two) of one activation."""
    if mm.count == 0 or mm.amax == 0.0:
        # never seen, or only zeros (scikit-learn SVC's vote of a class pair no sample chose): from_range's
        # unit scale; a fix position from the zero range was 106, an Add's 100-bit alignment shift
        return 0.0, 0.0, None
    if s.scale_type == "power_of_two":
        n = pow2_position(s.method, mm.amax, hist, s.bit_width, s.percentile, s.round_mode)
        t = float(numerics.pow2_scale(n)) * numerics.qrange(s.bit_width, True)[1]
        return -t, t, n
    if s.symmetric:
        t = symmetric_threshold(s.method, mm.amax, hist, s.bit_width, s.percentile, s.round_mode)
        if not s.signed:
            return 0.0, min(t, max(mm.max, 0.0)), None
        return -t, t, None
    lo, hi = asymmetric_range(s.method, mm.min, mm.max, hist, s.bit_width, s.signed, s.percentile, s.round_mode)
    return lo, hi, None


def weight_params(name: str, values: np.ndarray, s: TensorSettings, axis: int | None, kind: str = "weight") -> TensorQuant:
    """Parameters of a constant tensor from its values (per channel along ``axis`` when asked)."""
    w = np.asarray(values, dtype=np.float32)
    common = dict(name=name, kind=kind, bits=s.bit_width, signed=s.signed, narrow_range=s.narrow_range,
                  round_mode=s.round_mode, method=s.method)
    per_channel = s.per_channel and axis is not None and w.ndim > 0
    if not per_channel:
        if not s.symmetric or not w.any():  # all zero: from_range's unit scale
            return from_range(name, kind, s, float(w.min(initial=0.0)), float(w.max(initial=0.0)))
        amax = np.asarray(float(np.max(np.abs(w), initial=0.0)))
        axis = None
    else:
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        amax = np.max(np.abs(moved), axis=1)
    qmin, qmax = numerics.qrange(s.bit_width, True, s.narrow_range)
    if s.scale_type == "power_of_two":
        fix = numerics.pow2_fix_pos(amax, s.bit_width)
        if s.method in ("mse", "auto"):
            fix = _search_pow2(w, fix, axis, s)
        scale = numerics.pow2_scale(fix)
        return TensorQuant(scale=scale, zero_point=np.zeros_like(fix), axis=axis, threshold=_plain(scale * qmax), **common)
    # weights exactly on a power-of-two grid that fits the codes (a bilinear upsampling's taps k/16,
    # an averaging conv's 1/4, weights trained at power-of-two scales) keep that grid: max/127 would
    # round them (x2 bilinear 1/16, 9/16 -> 14/127, 127/127 x 9/16: DC gain 0.9965); zero channels do not
    grid = numerics.pow2_scale(numerics.pow2_fix_pos(amax, s.bit_width))
    exact = (np.asarray(amax) > 0) & (_channel_errors(w, grid, axis, s) == 0)
    if s.method in ("mse", "auto", "percentile", "entropy") and not np.all(exact):
        amax = _search_float(w, amax, axis, s)
    scale = np.where(exact, grid, numerics.float_scale(amax, s.bit_width, s.narrow_range)).astype(np.float32)
    return TensorQuant(scale=scale, zero_point=np.zeros(scale.shape, np.int64), axis=axis,
                       threshold=_plain(amax), **common)


def _plain(a: np.ndarray) -> float | list[float]:
    a = np.asarray(a, dtype=np.float64)
    return a.tolist() if a.ndim else float(a)


def _channel_errors(w: np.ndarray, scale: np.ndarray, axis: int | None, s: TensorSettings) -> np.ndarray:
    fq = numerics.fake_quantize(w, scale, 0, bits=s.bit_width, narrow=s.narrow_range, round_mode=s.round_mode,
                                axis=axis if np.ndim(scale) == 1 else None)
    err = (fq - w) ** 2
    if axis is None or np.ndim(scale) == 0:
        return np.asarray(err.sum())
    return np.moveaxis(err, axis, 0).reshape(w.shape[axis], -1).sum(axis=1)


def _search_pow2(w: np.ndarray, fix: np.ndarray, axis: int | None, s: TensorSettings) -> np.ndarray:
    best = np.asarray(fix).copy()
    best_err = _channel_errors(w, numerics.pow2_scale(best), axis, s)
    for delta in (1, 2):
        cand = np.asarray(fix) + delta
        err = _channel_errors(w, numerics.pow2_scale(cand), axis, s)
        better = err < best_err
        best = np.where(better, cand, best)
        best_err = np.where(better, err, best_err)
    return best.astype(np.int32)


def _search_float(w: np.ndarray, amax: np.ndarray, axis: int | None, s: TensorSettings) -> np.ndarray:
    best = np.asarray(amax, dtype=np.float64).copy()
    best_err = _channel_errors(w, numerics.float_scale(best, s.bit_width, s.narrow_range), axis, s)
    for frac in np.linspace(0.5, 0.99, 25):
        cand = np.asarray(amax, dtype=np.float64) * frac
        err = _channel_errors(w, numerics.float_scale(cand, s.bit_width, s.narrow_range), axis, s)
        better = err < best_err
        best = np.where(better, cand, best)
        best_err = np.where(better, err, best_err)
    return best


def bias_params(name: str, s_in: np.ndarray, s_w: np.ndarray, s: TensorSettings, axis: int = 0) -> TensorQuant:
    """int32 bias with scale ``s_in * s_w`` (per channel when the weights are)."""
    scale = (np.asarray(s_in, np.float32) * np.asarray(s_w, np.float32)).astype(np.float32)
    return TensorQuant(name=name, kind="bias", bits=32, signed=True, narrow_range=False, round_mode=s.round_mode,
                       scale=scale, zero_point=np.zeros(scale.shape, np.int64),
                       axis=axis if scale.ndim == 1 else None, method="derived")
