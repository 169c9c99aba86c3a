"""Calibration methods: from observed statistics to the clipping threshold of a tensor.

Symmetric methods work on the histogram of ``|x|`` (values are taken at bin centres):

* ``minmax``: the largest magnitude seen (no clipping);
* ``percentile``: the magnitude below which ``percentile`` % of the values lie;
* ``entropy``: the threshold whose quantized distribution has the least KL divergence from the
  observed one (the TensorRT/Horizon ``kl`` method);
* ``mse``: the threshold minimising the expected squared quantization error;
* ``auto``: the best (least expected squared error) of all the above candidates, and on
  power-of-two targets of the fix positions around the min/max one; the role of Vitis AI's
  ``diffs`` and Horizon's ``default`` search.

On power-of-two scales a threshold is turned into a fix position by
:func:`npuflow.numerics.pow2_fix_pos`; ``mse``/``auto`` search fix positions directly.  The
expected error of a candidate rounds with the tensor's own tie rule (``round_mode``): bin centres
fall on exact ties of power-of-two scales.
"""

from __future__ import annotations

import numpy as np

from .. import numerics
from .observers import HistogramObserver


def abs_grid(hist: HistogramObserver) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and counts of ``|x|``."""
    counts = hist.abs_counts().astype(np.float64)
    width = hist.bin_width
    centres = (np.arange(counts.size) + 0.5) * width
    return centres, counts


def percentile_abs(hist: HistogramObserver, percentile: float) -> float:
    centres, counts = abs_grid(hist)
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts) / total
    k = int(np.searchsorted(cdf, percentile / 100.0))
    return float((min(k, counts.size - 1) + 1) * hist.bin_width)


def percentile_range(hist: HistogramObserver, percentile: float) -> tuple[float, float]:
    """Asymmetric percentile: the ``(100-p)`` % and ``p`` % quantiles."""
    total = hist.counts.sum()
    if total == 0:
        return 0.0, 0.0
    cdf = np.cumsum(hist.counts) / total
    edges = hist.edges()
    lo = int(np.searchsorted(cdf, 1.0 - percentile / 100.0))
    hi = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(lo, hist.bins - 1)]), float(edges[min(hi, hist.bins - 1) + 1])


def expected_sq_error(centres: np.ndarray, counts: np.ndarray, scale: float, qmax: int,
                      round_mode: numerics.RoundMode | str) -> float:
    """Sum over bins of count * (x - fake_quant(x))^2 for symmetric quantization with ``scale``."""
    q = np.clip(numerics.round_values(centres / scale, round_mode), -qmax - 1, qmax)
    return float(np.sum(counts * (centres - q * scale) ** 2))


def mse_threshold(hist: HistogramObserver, amax: float, qmax: int, round_mode: numerics.RoundMode | str,
                  steps: int = 80) -> float:
    centres, counts = abs_grid(hist)
    if amax <= 0 or counts.sum() == 0:
        return amax
    candidates = amax * np.linspace(0.2, 1.0, steps + 1)[1:]
    errors = [expected_sq_error(centres, counts, t / qmax, qmax, round_mode) for t in candidates]
    return float(candidates[int(np.argmin(errors))])


def entropy_threshold(hist: HistogramObserver, qmax: int) -> float:
    """KL-divergence calibration on ``|x|`` with ``qmax + 1`` quantization levels."""
    _, counts = abs_grid(hist)
    n = counts.size
    levels = qmax + 1
    if counts.sum() == 0 or n <= levels:
        return float(n * hist.bin_width)
    best_i, best_kl = n, np.inf
    stride = max(1, (n - levels) // 128)
    for i in range(levels, n + 1, stride):
        ref = counts[:i].copy()
        ref[-1] += counts[i:].sum()
        # quantize the first i bins into `levels` groups, spread each group's mass over its non-empty bins
        groups = np.array_split(np.arange(i), levels)
        cand = np.zeros(i)
        for g in groups:
            nz = counts[g] > 0
            if nz.any():
                cand[g[nz]] = counts[g].sum() / nz.sum()
        p = ref / ref.sum()
        q = cand / max(cand.sum(), 1e-300)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(best_i * hist.bin_width)


def symmetric_threshold(method: str, amax: float, hist: HistogramObserver | None, bits: int,
                        percentile: float, round_mode: numerics.RoundMode | str) -> float:
    """Clipping threshold of a symmetric float-scale quantizer."""
    qmax = numerics.qrange(bits, True)[1]
    if method == "minmax" or hist is None:
        return amax
    if method == "percentile":
        return min(percentile_abs(hist, percentile), amax)
    if method == "entropy":
        return min(entropy_threshold(hist, qmax), amax)
    if method == "mse":
        return mse_threshold(hist, amax, qmax, round_mode)
    centres, counts = abs_grid(hist)
    candidates = [amax, min(percentile_abs(hist, percentile), amax), min(entropy_threshold(hist, qmax), amax),
                  mse_threshold(hist, amax, qmax, round_mode)]
    errors = [expected_sq_error(centres, counts, max(t, 1e-30) / qmax, qmax, round_mode) for t in candidates]
    return float(candidates[int(np.argmin(errors))])


def pow2_position(method: str, amax: float, hist: HistogramObserver | None, bits: int,
                  percentile: float, round_mode: numerics.RoundMode | str) -> int:
    """Fix position of a power-of-two quantizer."""
    qmax = numerics.qrange(bits, True)[1]
    if method in ("minmax", "percentile", "entropy") or hist is None:
        t = symmetric_threshold(method, amax, hist, bits, percentile, round_mode)
        return int(numerics.pow2_fix_pos(t, bits))
    n0 = int(numerics.pow2_fix_pos(amax, bits))
    centres, counts = abs_grid(hist)
    options = [n0, n0 + 1, n0 + 2] if method == "mse" else [n0 - 1, n0, n0 + 1, n0 + 2, n0 + 3]
    errors = [expected_sq_error(centres, counts, float(numerics.pow2_scale(n)), qmax, round_mode) for n in options]
    return int(options[int(np.argmin(errors))])
