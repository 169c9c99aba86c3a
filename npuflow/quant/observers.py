"""Streaming statistics of one tensor, with state whose size never depends on the sample count.

* :class:`MinMaxObserver` keeps the running minimum and maximum (2 numbers).
* :class:`HistogramObserver` keeps a fixed number of bins over ``[-R, R]``.  ``R`` starts as the
  power of two above the first batch's largest magnitude and doubles when a later batch exceeds
  it, merging neighbouring bin pairs into the middle half of the array, so no earlier count is
  lost and the state stays ``bins`` integers.  Samples may have any shape (OCR widths vary).
  It also counts the values that are exactly zero (they share the bin ``[0, width)`` with small
  positive ones): every symmetric quantizer represents them exactly, so entropy calibration
  leaves them out (a ReLU output is 70-90 % zeros, and that spike made it pick the smallest
  threshold it could, :mod:`npuflow.quant.thresholds`).

Both observers merge (:meth:`MinMaxObserver.merge`, :meth:`HistogramObserver.merge`), so
calibration shards run in parallel processes and give the statistics of one process on the
same samples, bit for bit.  The histogram rule that makes this exact is its power-of-two grid:
value ``v`` goes to bin ``floor(v * bins / 2R) + bins / 2`` (``+R`` to the top bin), computed
without rounding (a float32 product by a power of two, or a float64 product otherwise), so the
bin of ``v`` at range ``2R`` is always its bin at range ``R`` with pairs merged.  The histogram
is therefore a function of the values seen and of the final range alone — not of their order
or of how they were split — and merging is: grow the narrower histogram to the wider range,
add the counts.  (Rebinning onto a union range at a coarser width would only be approximate:
counts split between bins whose edges do not line up.)

Thresholds are computed from these states in :mod:`npuflow.quant.thresholds`.
"""

from __future__ import annotations

import math

import numpy as np

from ..check.nonfinite import finite_values  # one test with check (check.nonfinite.sentinel_tensors)


class MinMaxObserver:
    """Running min/max of every finite value seen, and how many values were not finite."""

    __slots__ = ("min", "max", "count", "nonfinite")

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        _, lo, hi, bad = finite_values(np.asarray(x), float(np.min(x)), float(np.max(x)))
        self.update_range(lo, hi, int(x.size) - bad, bad)

    def update_range(self, lo: float, hi: float, count: int, nonfinite: int = 0) -> None:
        """Fold in a batch whose extremes are already known (the histogram observer finds them)."""
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += count
        self.nonfinite += nonfinite

    def merge(self, other: "MinMaxObserver") -> None:
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite

    @property
    def amax(self) -> float:
        """Largest magnitude seen (0 before any value)."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    def state_size(self) -> int:
        """Numbers held (constant)."""
        return 4


class HistogramObserver:
    """Fixed-size histogram over a symmetric range that grows by doubling."""

    __slots__ = ("bins", "counts", "range", "top", "zeros")

    #: Smallest starting range, so an all-zero first batch still gives a usable grid.
    MIN_RANGE = 2.0 ** -24

    def __init__(self, bins: int = 2048) -> None:
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0  # R: the histogram covers [-R, R]
        #: how many of the top bin's counts are exactly ``+R``: when ``R`` doubles they belong to
        #: the bin starting at the old ``R``, not to the merged top pair
        self.top = 0
        #: how many values seen were exactly zero (they are also counted in bin ``bins / 2``)
        self.zeros = 0

    def update(self, x: np.ndarray) -> tuple[float, float, int, int] | None:
        """Count ``x``'s finite values; returns ``(min, max, finite count, non-finite count)``
        (``None`` when empty) for the min/max observer."""
        if x.size == 0:
            return None
        v = np.asarray(x, dtype=np.float32).ravel()
        v, lo, hi, bad = finite_values(v, float(v.min()), float(v.max()))
        if v.size == 0:
            return lo, hi, 0, bad
        amax = max(hi, -lo)
        if self.range == 0.0:
            self.range = max(2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 0.0, self.MIN_RANGE)
        while amax > self.range:
            self._grow()
        idx = self._bin_index(v)
        if hi == self.range:  # +R is the closed end of the top bin
            self.top += int(np.count_nonzero(idx == self.bins))
        np.minimum(idx, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.zeros += int(np.count_nonzero(v == 0))
        return lo, hi, int(v.size), bad

    def _bin_index(self, v: np.ndarray) -> np.ndarray:
        """``floor(v * bins / 2R) + bins / 2`` without rounding: ``v`` is float32, and the factor
        a power of two >= 1 (exact in float32, as fast as the float32 truncation this replaced,
        whose ``v + R`` rounding moved ~1e-4 of the values to a neighbouring bin depending on the
        range at the time) or else at most 17 significant bits (exact in float64)."""
        factor = self.bins / (2.0 * self.range)
        exact32 = factor >= 1.0 and math.frexp(factor)[0] == 0.5
        dtype = np.float32 if exact32 else np.float64
        scaled = np.multiply(v, dtype(factor), dtype=dtype)
        np.floor(scaled, out=scaled)
        idx = scaled.astype(np.intp)
        idx += self.bins // 2
        return idx

    def _grow(self) -> None:
        """Double the range: bin pairs merge into the middle half."""
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.zeros_like(self.counts)
        q = self.bins // 4
        self.counts[q:q + merged.size] = merged
        self.counts[3 * q - 1] -= self.top  # the old +R values: floor(R * bins / 4R) + bins / 2 = 3q
        self.counts[3 * q] += self.top
        self.top = 0
        self.range *= 2.0

    def merge(self, other: "HistogramObserver") -> None:
        """Fold in another shard's histogram: exactly the histogram of both shards' values (see
        the module docstring); ``other`` is left unchanged."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        if other.range == 0.0:
            return
        if self.range == 0.0:
            self.range = other.range
        wider = other.copy()
        while self.range < wider.range:
            self._grow()
        while wider.range < self.range:
            wider._grow()
        self.counts += wider.counts
        self.top += wider.top
        self.zeros += wider.zeros

    def copy(self) -> "HistogramObserver":
        twin = HistogramObserver(self.bins)
        twin.counts = self.counts.copy()
        twin.range = self.range
        twin.top = self.top
        twin.zeros = self.zeros
        return twin

    @property
    def bin_width(self) -> float:
        return 2.0 * self.range / self.bins

    def edges(self) -> np.ndarray:
        return np.linspace(-self.range, self.range, self.bins + 1)

    def abs_counts(self) -> np.ndarray:
        """Histogram of ``|x|`` over ``[0, R]`` with ``bins / 2`` bins (for symmetric methods)."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1]

    def state_size(self) -> int:
        """Numbers held (constant: ``bins + 3``)."""
        return int(self.counts.size) + 3
