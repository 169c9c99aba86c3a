"""Calibration methods: from observed statistics to the clipping threshold of a tensor.

Symmetric methods work on the histogram of ``|x|`` (values are taken at bin centres), except
``entropy``, which keeps the two signs apart:

* ``minmax``: the largest magnitude seen (no clipping);
* ``percentile``: the magnitude below which ``percentile`` % of the values lie;
* ``entropy``: the threshold whose quantized distribution has the least KL divergence from the
  observed one (the TensorRT/Horizon ``kl`` method), with exact zeros and point masses kept out
  of the spreading and clipped mass counted (:func:`entropy_threshold`; on power-of-two targets
  compared at the fix positions themselves, :func:`entropy_position`);
* ``mse``: the threshold minimising the expected squared quantization error;
* ``auto``: of all the above candidates, the one that clips least among those whose expected
  squared error is within :data:`AUTO_TOLERANCE` of the least (:func:`least_clipping`); on
  power-of-two targets the least expected error among the fix positions around the min/max one
  (one position doubles the step, so rounding noise never ties with clipping there); the role of
  Vitis AI's ``diffs`` and Horizon's ``default`` search.

On power-of-two scales a threshold is turned into a fix position by
:func:`npuflow.numerics.pow2_fix_pos`; ``mse``/``auto``/``entropy`` search fix positions directly.  The
expected error of a candidate rounds with the tensor's own tie rule (``round_mode``): bin centres
fall on exact ties of power-of-two scales.

Asymmetric (zero-point) activations, cpu-int8's uint8, get a range ``(lo, hi)`` instead
(:func:`asymmetric_range`): the two quantiles for ``percentile``, a KL search per sign at the
level count each sign's reach gives it for ``entropy``, coordinate descent on the expected
squared error of the real zero-point quantizer for ``mse``, and ``auto``'s
:func:`least_clipping` over those candidates and min/max.
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


#: Relative margin of expected squared error within which ``auto`` prefers the candidate that clips
#: least (:func:`least_clipping`).
AUTO_TOLERANCE = 0.5


def least_clipping(errors: list[float], reach: list[float]) -> int:
    """Index of the candidate of largest ``reach`` (its threshold) among those whose expected
    squared error is within :data:`AUTO_TOLERANCE` of the least.

    The expected squared error weighs a clipped value's error like rounding noise, but rounding
    noise is independent from value to value and averages out in the next layer's sums, while a
    clipped value is a large one (often the one that decides) cut the same way every time.  PP-OCR
    cls on bernoulli2: the least-error thresholds were 0.61-0.89 of the range on about 70 tensors,
    each clipping 2-9 values in 100,000 for 20-40 % less expected error, and the output cosine
    with FP32 was 0.9951 against min/max's 0.9990 (64 held-out lines).  Clipping is now taken only
    where it cuts the expected error by more than a third (``AUTO_TOLERANCE`` 0.5: cls 0.9997,
    EfficientNet-Lite0 0.9917 against 0.9920 before; at 1.0, clipping only where it halves the
    error, EfficientNet-Lite0 fell to 0.9900); ties go to the wider."""
    least = min(errors)
    near = [i for i, e in enumerate(errors) if e <= least * (1.0 + AUTO_TOLERANCE)]
    return max(near, key=lambda i: (reach[i], -errors[i]))


def mse_threshold(hist: HistogramObserver, amax: float, qmax: int, round_mode: numerics.RoundMode | str,
                  steps: int = 80) -> float:
    centres, counts = abs_grid(hist)
    if amax <= 0 or counts.sum() == 0:
        return amax
    candidates = amax * np.linspace(0.2, 1.0, steps + 1)[1:]
    errors = [expected_sq_error(centres, counts, t / qmax, qmax, round_mode) for t in candidates]
    return float(candidates[int(np.argmin(errors))])


#: One side of a histogram for the entropy search: its counts from zero outwards, and the part of
#: each count that is a point mass (:func:`_atoms`).
Side = tuple[np.ndarray, np.ndarray]


def _entropy_sides(hist: HistogramObserver) -> tuple[Side, Side]:
    """The positive and the negative half, each from zero outwards, exact zeros left out.

    The halves stay apart: folded into ``|x|``, MNIST's input (a background of -0.42 under 80 % of
    the pixels, digit strokes up to 2.8) put the background spike among the strokes' bins, and
    the threshold fell to 0.61, clipping every stroke.  Exact zeros are represented exactly at
    any threshold, so they cannot inform the choice; left in, a ReLU output's zero spike (70-90 %
    of its values) was spread over its group's bins by the quantized model below, and the
    divergence was least at the smallest threshold searched, 1/8 of the range."""
    half = hist.bins // 2
    positive = hist.counts[half:].astype(np.float64)
    positive[0] -= hist.zeros
    negative = hist.counts[:half][::-1].astype(np.float64)
    return (positive, _atoms(positive)), (negative, _atoms(negative))


def _atoms(counts: np.ndarray, reach: int = 8, factor: float = 4.0) -> np.ndarray:
    """Point masses: what a bin holds beyond ``factor`` times the median of its ``2 * reach``
    neighbours (a constant background's value, repeated in every sample).

    Quantized, a point mass stays one value (within half a step), but TensorRT's quantized
    distribution spreads it over its group's non-empty bins, so a divergence that keeps it apart
    is least where groups are one bin wide: the smallest threshold.  PP-OCR cls's first ReLU
    outputs (text-line backgrounds: 8 bins holding 25 times their neighbours) were clipped at
    0.19 of their range; :func:`_divergence` keeps these masses exact in the quantized side."""
    padded = np.pad(counts, reach)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1)
    neighbours = np.delete(windows, reach, axis=1)
    return np.maximum(counts - factor * np.median(neighbours, axis=1), 0.0)


def _quantized(head: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT's quantized distribution of ``head``: its bins split into ``levels`` groups as
    ``np.array_split`` does, each group's mass spread evenly over its non-empty bins."""
    size = head.size
    sizes = np.full(levels, size // levels, dtype=np.intp)
    sizes[:size % levels] += 1
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    nonempty = head > 0
    mass = np.add.reduceat(head, starts)
    filled = np.add.reduceat(nonempty.astype(np.float64), starts)
    per_bin = np.divide(mass, filled, out=np.zeros_like(mass), where=filled > 0)
    return np.repeat(per_bin, sizes) * nonempty


def _divergence(sides: tuple[Side, Side], i: int, levels: int) -> float:
    """KL divergence at a threshold of ``i`` bins: on each side the first ``i`` bins with the
    values beyond added to the last (the reference) against those bins quantized to ``levels``.

    The quantized distribution is divided by the reference's total, not by its own: TensorRT
    renormalises it, which hands the clipped values' mass back to the kept bins, so clipping
    costs nothing where the kept bins are sparse.  PP-OCR cls's SE-block tensors (a few hundred
    values, all in -1.9..-0.8) scored zero divergence at a threshold of 0.80, below every value,
    and the model's output cosine fell to 0.58.  Kept, the deficit adds ``-log(1 - clipped
    fraction)``: 0.001 for 0.1 % clipped, without bound as everything is."""
    refs, cands = [], []
    for counts, atoms in sides:
        pad = max(0, i - counts.size)
        head = np.concatenate((counts, np.zeros(pad)))[:i]
        point = np.concatenate((atoms, np.zeros(pad)))[:i]
        ref = head.copy()
        ref[-1] += counts[i:].sum()
        refs.append(ref)
        cands.append(_quantized(head - point, levels) + point)
    p, q = np.concatenate(refs), np.concatenate(cands)
    total = p.sum()
    if total == 0:
        return 0.0
    p /= total
    q /= total
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


#: Absolute margin within which a candidate's scanned divergence (:func:`_divergence_scan`) must lie of
#: the least for :func:`_least_divergence` to recompute it exactly.  The scan's rounding error is a few
#: ulps of 1 per group (prefix-sum differences of a distribution that sums to 1, each weighed by a mass
#: no larger than its group's): under 1e-11 for 2048 bins and 256 levels, so 1e-9 leaves a wide margin.
_SCAN_MARGIN = 1e-9


def _divergence_scan(sides: tuple[Side, ...], candidates: np.ndarray, levels: int) -> np.ndarray:
    """:func:`_divergence` at every threshold in ``candidates`` (each of ``levels`` to a side's size
    bins) at once, equal up to rounding.

    Called one threshold at a time, the search cost 0.22 s a tensor (FlowNetC: 86 of build's 112 s on
    bernoulli2, round 28a).  Here the divergence splits into per-bin parts summed by prefix sums:
    ``sum p log p`` over the kept bins, ``log q`` of each group times the mass of its bins that are not
    point masses (all share the group's spread value), the point masses' bins one by one, and the last
    bin, which carries the clipped tail.  Summed in another order, the result can differ from
    :func:`_divergence` in the last digits: :func:`_least_divergence` settles the choice exactly."""
    total = sum(float(counts.sum()) for counts, _ in sides)
    i = candidates.astype(np.intp)
    rows = np.arange(i.size)[:, None]
    # np.array_split's groups: the first i % levels of i // levels + 1 bins, the rest of i // levels
    size, extra = (i // levels)[:, None], (i % levels)[:, None]
    groups = np.arange(levels + 1)
    bounds = groups * size + np.minimum(groups, extra)
    kl = np.zeros(i.size)
    for counts, atoms in sides:
        p, pt = counts / total, atoms / total
        nonempty = counts - atoms > 0  # the bins the spread reaches: a whole point mass's does not
        plogp = p * np.log(np.where(p > 0, p, 1.0))
        cum_plogp, cum_p = np.cumsum(np.r_[0.0, plogp]), np.cumsum(np.r_[0.0, p])
        filled = np.diff(np.cumsum(np.r_[0, nonempty])[bounds], axis=1)
        # a group with no bin filled has only whole point masses: its spread mass is exactly zero
        per_bin = np.diff(np.cumsum(np.r_[0.0, p - pt])[bounds], axis=1) / np.maximum(filled, 1)
        log_q = np.log(np.maximum(per_bin, 1e-12))
        cum_plain = np.cumsum(np.r_[0.0, np.where(pt > 0, 0.0, p)])
        plain_bounds = cum_plain[bounds]
        plain_bounds[:, -1] = cum_plain[i - 1]  # the last bin has its own term
        plain = np.diff(plain_bounds, axis=1)
        kl += cum_plogp[i - 1] - np.einsum("kg,kg->k", plain, log_q)
        a = np.flatnonzero(pt > 0)  # point masses: their bin's group depends on the threshold
        if a.size:
            wide = (size + 1) * extra
            g = np.where(a < wide, a // (size + 1), extra + (a - wide) // size)
            q = per_bin[rows, np.minimum(g, levels - 1)] * nonempty[a] + pt[a]
            kl -= np.sum(np.where(a < i[:, None] - 1, p[a] * np.log(np.maximum(q, 1e-12)), 0.0), axis=1)
        last = i - 1
        ref = p[last] + (cum_p[-1] - cum_p[i])
        q_last = per_bin[:, -1] * nonempty[last] + pt[last]
        kl += np.where(ref > 0, ref * (np.log(np.where(ref > 0, ref, 1.0)) - np.log(np.maximum(q_last, 1e-12))), 0.0)
    return kl


def _least_divergence(sides: tuple[Side, ...], candidates: range, levels: int) -> tuple[int, float]:
    """Index in ``candidates`` of the least :func:`_divergence` (ties: the larger threshold) and that
    divergence, exactly as evaluating every candidate would give.

    The scan (:func:`_divergence_scan`) errs by less than half of :data:`_SCAN_MARGIN`, so every
    candidate whose exact divergence is the least scans within the margin of the scanned least; only
    those are evaluated exactly, and the choice among them is the full search's."""
    scanned = _divergence_scan(sides, np.arange(candidates.start, candidates.stop), levels)
    if np.all(np.isfinite(scanned)):
        near = np.flatnonzero(scanned <= scanned.min() + _SCAN_MARGIN)
    else:  # not met in practice; the exact search is the reference
        near = np.arange(len(candidates))
    exact = np.array([_divergence(sides, candidates[k], levels) for k in near])
    best = int(np.flatnonzero(exact == exact.min())[-1])
    return int(near[best]), float(exact[best])


def entropy_threshold(hist: HistogramObserver, qmax: int) -> float:
    """KL-divergence calibration (TensorRT's entropy method) with ``qmax + 1`` levels a side.

    Every threshold from ``qmax + 1`` bins (where TensorRT starts) to the last non-empty bin is
    tried, both signs at once (:func:`_entropy_sides`); on equal divergence the larger wins (no
    clipping that buys nothing)."""
    sides = _entropy_sides(hist)
    levels = qmax + 1
    used = np.flatnonzero((sides[0][0] > 0) | (sides[1][0] > 0))
    if used.size == 0:
        return float(hist.range)
    end = int(used[-1]) + 1
    if end <= levels:
        return float(end * hist.bin_width)
    candidates = range(levels, end + 1)
    best, _ = _least_divergence(sides, candidates, levels)
    return float(candidates[best] * hist.bin_width)


def entropy_position(hist: HistogramObserver, amax: float, bits: int) -> int:
    """Fix position of a power-of-two quantizer by KL divergence, compared at the positions.

    Snapping the float threshold afterwards (the largest position that covers it) moved it by up
    to a factor of two with no regard to the divergence; here each position from the min/max one
    down to a step of one bin is a threshold of ``qmax + 1`` steps, one group per step, and the
    least divergence wins (ties: the coarser position, which clips less)."""
    qmax = numerics.qrange(bits, True)[1]
    levels = qmax + 1
    n0 = int(numerics.pow2_fix_pos(amax, bits))
    sides = _entropy_sides(hist)
    if not (sides[0][0].any() or sides[1][0].any()):
        return n0
    best_n, best_kl = n0, np.inf
    n = n0
    while True:
        bins_per_step = float(numerics.pow2_scale(n)) / hist.bin_width
        if bins_per_step < 1.0:
            break
        kl = _divergence(sides, int(levels * bins_per_step), levels)
        if kl < best_kl:
            best_n, best_kl = n, kl
        n += 1
    return best_n


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
    return float(candidates[least_clipping(errors, candidates)])


def pow2_position(method: str, amax: float, hist: HistogramObserver | None, bits: int,
                  percentile: float, round_mode: numerics.RoundMode | str) -> int:
    """Fix position of a power-of-two quantizer."""
    qmax = numerics.qrange(bits, True)[1]
    if method == "entropy" and hist is not None:
        return entropy_position(hist, amax, bits)
    if method in ("minmax", "percentile", "entropy") or hist is None:
        t = symmetric_threshold(method, amax, hist, bits, percentile, round_mode)
        return int(numerics.pow2_fix_pos(t, bits))
    n0 = int(numerics.pow2_fix_pos(amax, bits))
    centres, counts = abs_grid(hist)
    options = [n0, n0 + 1, n0 + 2] if method == "mse" else [n0 - 1, n0, n0 + 1, n0 + 2, n0 + 3]
    errors = [expected_sq_error(centres, counts, float(numerics.pow2_scale(n)), qmax, round_mode) for n in options]
    return int(options[int(np.argmin(errors))])


# --- asymmetric (zero-point) ranges -------------------------------------------------------------


def signed_grid(hist: HistogramObserver) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and counts of ``x`` over ``[-R, R]``, exact zeros left out: a zero point
    represents them exactly, so they carry no error, while at their bin's centre they would be
    charged half a bin's error each (a ReLU output is 70-90 % zeros)."""
    counts = hist.counts.astype(np.float64)
    counts[hist.bins // 2] -= hist.zeros
    centres = -hist.range + (np.arange(hist.bins) + 0.5) * hist.bin_width
    return centres, counts


def asymmetric_sq_errors(centres: np.ndarray, counts: np.ndarray, ranges: list[tuple[float, float]], bits: int,
                         signed: bool, round_mode: numerics.RoundMode | str) -> np.ndarray:
    """Expected squared error of the zero-point quantizer of each ``(lo, hi)`` in ``ranges`` over
    the histogram: scale and zero point as :func:`npuflow.numerics.asymmetric_params` sets them
    (the parameters written to the model), codes rounded with the tensor's tie rule and clipped to
    the code range, all candidates at once."""
    qmin, qmax = numerics.qrange(bits, signed)
    params = [numerics.asymmetric_params(lo, hi, bits, signed) for lo, hi in ranges]
    scale = np.array([float(p[0]) for p in params])[:, None]
    zp = np.array([float(p[1]) for p in params])[:, None]
    q = np.clip(numerics.round_values(centres[None, :] / scale, round_mode) + zp, qmin, qmax)
    return np.sum(counts[None, :] * (centres[None, :] - (q - zp) * scale) ** 2, axis=1)


def asymmetric_mse_range(hist: HistogramObserver, lo: float, hi: float, bits: int, signed: bool,
                         round_mode: numerics.RoundMode | str, steps: int = 80, rounds: int = 3) -> tuple[float, float]:
    """The ``(lo, hi)`` of least expected squared error, each side a fraction 0.2-1 of the
    observed one, by coordinate descent (the upper side with the lower fixed, then the lower,
    ``rounds`` times; a side with no values stays at zero).  Histogram-based: the cost is
    ``rounds * 2 * steps`` candidate rows of ``bins``, whatever the sample count."""
    centres, counts = signed_grid(hist)
    if counts.sum() == 0 or hi <= lo:
        return lo, hi
    fractions = np.linspace(0.2, 1.0, steps + 1)[1:]
    best = (lo, hi)
    for _ in range(rounds):
        for side in (1, 0):
            if (hi if side else -lo) <= 0:
                continue
            ranges = [(best[0], hi * f) if side else (lo * f, best[1]) for f in fractions]
            errors = asymmetric_sq_errors(centres, counts, ranges, bits, signed, round_mode)
            best = ranges[int(np.flatnonzero(errors == errors.min())[-1])]  # ties: the wider
    return float(best[0]), float(best[1])


def _side_entropy(side: Side, levels: int, bin_width: float) -> tuple[float, float]:
    """KL-optimal threshold of one side of the histogram quantized to ``levels`` steps, and its
    divergence (normalised by that side's own total): :func:`entropy_threshold` on one sign."""
    used = np.flatnonzero(side[0] > 0)
    if used.size == 0:
        return 0.0, 0.0
    end = int(used[-1]) + 1
    if end <= levels:
        return float(end * bin_width), 0.0
    candidates = range(levels, end + 1)
    best, divergence = _least_divergence((side,), candidates, levels)
    return float(candidates[best] * bin_width), divergence


def _reach_divergence(side: Side, reach_bins: float, levels: int) -> float:
    """Divergence of one side clipped at ``reach_bins`` bins (rounded up) and quantized to
    ``levels`` steps; a reach of no more bins than levels keeps every bin its own level."""
    i = max(1, int(np.ceil(reach_bins)))
    return _divergence((side,), i, min(levels, i))


def asymmetric_entropy_range(hist: HistogramObserver, lo: float, hi: float, bits: int, signed: bool,
                             iterations: int = 2) -> tuple[float, float]:
    """KL-divergence range of a zero-point quantizer.

    The ``qmax - qmin`` steps over ``[lo, hi]`` fall to the two signs in proportion to their
    reach (a ReLU output gets all 255 of uint8, against 127 for a symmetric signed one).  Starting
    from min/max, each side takes its KL-optimal threshold at the level count its current share
    implies, and the shares are recomputed from the new range, ``iterations`` times.  Each range
    met (min/max included) is scored by the divergence of the whole distribution (the sides'
    divergences weighted by their mass: both are normalised by the same total) and the least wins,
    ties to the earlier (wider) one, so a side's shrinking share cannot starve it into a collapse."""
    qmin, qmax = numerics.qrange(bits, signed)
    steps = qmax - qmin
    sides = _entropy_sides(hist)
    masses = np.array([sides[0][0].sum(), sides[1][0].sum()])
    if masses.sum() == 0 or hi <= lo:
        return lo, hi
    weights = masses / masses.sum()
    width = hist.bin_width
    current = (min(lo, 0.0), max(hi, 0.0))
    best, best_kl = current, np.inf
    for _ in range(iterations + 1):
        pos_levels = max(1, int(steps * current[1] / (current[1] - current[0])))
        neg_levels = max(1, steps - pos_levels)
        t_pos, kl_pos = _side_entropy(sides[0], pos_levels, width)
        t_neg, kl_neg = _side_entropy(sides[1], neg_levels, width)
        # the divergence of the range in hand, at its own split: each side at its current reach
        reach_kl = sum(w * _reach_divergence(s, r / width, n) for s, w, r, n in
                       ((sides[0], weights[0], current[1], pos_levels), (sides[1], weights[1], -current[0], neg_levels))
                       if w > 0)
        if reach_kl < best_kl:
            best, best_kl = current, reach_kl
        current = (max(-t_neg, lo) if masses[1] else min(lo, 0.0), min(t_pos, hi) if masses[0] else max(hi, 0.0))
        if current[1] <= current[0]:
            break
    return float(best[0]), float(best[1])


def asymmetric_range(method: str, lo: float, hi: float, hist: HistogramObserver | None, bits: int, signed: bool,
                     percentile: float, round_mode: numerics.RoundMode | str) -> tuple[float, float]:
    """Calibrated ``(lo, hi)`` of a zero-point (asymmetric) quantizer from the observed ``lo``/``hi``
    (min/max) and histogram: ``minmax``, ``percentile`` (the two quantiles), ``entropy``
    (:func:`asymmetric_entropy_range`), ``mse`` (:func:`asymmetric_mse_range`) or ``auto``: the
    four candidates scored by the expected squared error of the real quantizer, the widest of
    those within :data:`AUTO_TOLERANCE` of the least (:func:`least_clipping`, as symmetric ``auto``).
    The result always lies within ``[lo, hi]``."""
    if method == "minmax" or hist is None:
        return lo, hi

    def within(r: tuple[float, float]) -> tuple[float, float]:
        return max(r[0], lo), min(r[1], hi)

    pct = within(percentile_range(hist, percentile))
    if method == "percentile":
        return pct
    if method == "entropy":
        return within(asymmetric_entropy_range(hist, lo, hi, bits, signed))
    mse = within(asymmetric_mse_range(hist, lo, hi, bits, signed, round_mode))
    if method == "mse":
        return mse
    candidates = [(lo, hi), pct, within(asymmetric_entropy_range(hist, lo, hi, bits, signed)), mse]
    centres, counts = signed_grid(hist)
    errors = asymmetric_sq_errors(centres, counts, candidates, bits, signed, round_mode)
    reach = [max(c[1], 0.0) - min(c[0], 0.0) for c in candidates]
    return candidates[least_clipping([float(e) for e in errors], reach)]
