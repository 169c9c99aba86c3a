"""The accuracy check of probability outputs: values in [0, 1] (a Sigmoid's scores, a Softmax's
rows) judged around their own mean and by their largest error, not by a cosine around zero.

A cosine around zero credits a probability its offset: SCRFD's face scores and YOLOv7's objectness and
class columns are sigmoids near 0.5 with a small spread, so their cosine to the float model stays
>= 0.998 while single values move by 0.10-0.21 (round 28a), enough to cross a 0.5 threshold.  What
carries a score is its deviation from its typical value, so the cosine that judges it is that of the
deviations from the float values' mean (rknn's accuracy_analysis and AIMET report the error as well
as the cosine for the same reason).  The largest error is judged against [0, 1] as a few-value
output's is (:data:`~.output_kinds.MAX_FEW_VALUE_ERROR`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import NpuflowError
from .output_kinds import MAX_FEW_VALUE_ERROR, MIN_CHANNEL_SPREAD, channel_axis


@dataclass(frozen=True)
class ProbabilityError:
    """One probability output, or one channel of it (``channel`` None: the whole output), over the
    accuracy check's samples: its plain cosine, the cosine of deviations from the float mean
    (``centred``), the largest absolute error and the float values' mean and standard deviation."""

    channel: int | None
    axis: int | None
    cosine: float
    centred: float
    max_error: float
    mean: float
    spread: float

    def low(self, threshold: float) -> bool:
        """Whether it passes ``threshold`` by the plain cosine but not around its mean or by its
        largest error, judged only where the mean is at least the spread (the offset the plain cosine
        credits: scores near 0.5; a text map of mostly zeros, PP-OCRv4 det's mean 0.06 and spread 0.23,
        is judged fairly by it, and its edge pixels move by up to 1 whatever the task reads); a
        near-constant one (spread below ``MIN_CHANNEL_SPREAD`` of its mean) by its largest error only,
        as its centred cosine is that of rounding."""
        varies = self.spread >= MIN_CHANNEL_SPREAD * max(self.mean, 1e-12)
        return self.cosine >= threshold and self.mean >= self.spread and (
            (varies and self.centred < threshold) or self.max_error > MAX_FEW_VALUE_ERROR)

    def to_json(self) -> dict:
        return {"channel": self.channel, "axis": self.axis, "cosine": round(self.cosine, 6),
                "centred": round(self.centred, 6), "max_error": float(f"{self.max_error:.6g}"),
                "mean": float(f"{self.mean:.6g}"), "spread": float(f"{self.spread:.6g}")}


def _judged(f: np.ndarray, q: np.ndarray, channel: int | None, axis: int | None) -> ProbabilityError:
    """The figures of the float values ``f`` and quantized ``q`` (flat, finite)."""
    mean = float(f.mean())
    fc, qc = f - mean, q - mean
    def cos(a: np.ndarray, b: np.ndarray) -> float:
        den = math.sqrt(float(a @ a) * float(b @ b))
        return float(a @ b) / den if den > 0 else float(np.array_equal(a, b))
    return ProbabilityError(channel, axis, cos(f, q), cos(fc, qc), float(np.abs(q - f).max(initial=0.0)), mean,
                            float(f.std()))


def probability_errors(fp32: Sequence[np.ndarray], quantized: Sequence[np.ndarray]) -> list[ProbabilityError]:
    """The whole output's :class:`ProbabilityError` where every float value on every sample is in
    [0, 1], and along its :func:`~.output_kinds.channel_axis` each such channel's (YOLOv7's objectness
    and class columns beside its box's pixels); empty where none is a probability or the shapes differ."""
    shapes = {np.shape(a) for a in [*fp32, *quantized]}
    if not fp32 or len(shapes) != 1:
        return []
    f = np.stack([np.asarray(a, np.float64) for a in fp32])
    q = np.stack([np.asarray(b, np.float64) for b in quantized])
    if f.size == 0 or not (np.isfinite(f).all() and np.isfinite(q).all()):
        return []
    found = [_judged(f.ravel(), q.ravel(), None, None)] if _probability(f) else []
    if (axis := channel_axis(shapes.pop())) is not None:
        fs, qs = (np.moveaxis(a, axis + 1, -1).reshape(-1, a.shape[axis + 1]) for a in (f, q))
        found += [_judged(fs[:, c], qs[:, c], c, axis) for c in range(fs.shape[1]) if _probability(fs[:, c])]
    return found


def _probability(f: np.ndarray) -> bool:
    """Whether float values ``f`` all lie in [0, 1] (a Sigmoid's or a Softmax's)."""
    return bool(f.min() >= 0.0 and f.max() <= 1.0)


def probability_warnings(probabilities: dict[str, list[ProbabilityError]], threshold: float,
                         samples: str) -> list[NpuflowError]:
    """``NPF_QUANT_PROBABILITY_ERROR`` for each probability output whose values, or a channel's, pass
    ``threshold`` by the plain cosine but not around their mean or by their largest error."""
    found = []
    for output, rows in probabilities.items():
        low = [p for p in rows if p.low(threshold)]
        if low:
            found.append(NpuflowError(
                "NPF_QUANT_PROBABILITY_ERROR", output=output, samples=samples, threshold=threshold,
                limit=MAX_FEW_VALUE_ERROR,
                figures="; ".join(f"{'whole' if p.channel is None else f'channel {p.channel} of axis {p.axis}'}: "
                                  f"cosine {p.cosine:.4f}, around its mean {p.mean:.3f} {p.centred:.4f}, "
                                  f"largest error {p.max_error:.3f}" for p in low)))
    return found
