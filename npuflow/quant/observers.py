"""Streaming statistics of one tensor, with state whose size never depends on the sample count.

* :class:`MinMaxObserver` keeps the running minimum and maximum (2 numbers).
* :class:`HistogramObserver` keeps a fixed number of bins over ``[-R, R]``.  ``R`` starts as the
  power of two above the first batch's largest magnitude and doubles when a later batch exceeds
  it, merging neighbouring bin pairs into the middle half of the array, so no earlier count is
  lost and the state stays ``bins`` integers.  Samples may have any shape (OCR widths vary).

Thresholds are computed from these states in :mod:`npuflow.quant.thresholds`.
"""

from __future__ import annotations

import math

import numpy as np


class MinMaxObserver:
    """Running min/max of every value seen."""

    __slots__ = ("min", "max", "count")

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        self.update_range(float(np.min(x)), float(np.max(x)), int(x.size))

    def update_range(self, lo: float, hi: float, count: int) -> None:
        """Fold in a batch whose extremes are already known (the histogram observer finds them)."""
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += count

    def merge(self, other: "MinMaxObserver") -> None:
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count

    @property
    def amax(self) -> float:
        """Largest magnitude seen (0 before any value)."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    def state_size(self) -> int:
        """Numbers held (constant)."""
        return 3


class HistogramObserver:
    """Fixed-size histogram over a symmetric range that grows by doubling."""

    __slots__ = ("bins", "counts", "range")

    #: Smallest starting range, so an all-zero first batch still gives a usable grid.
    MIN_RANGE = 2.0 ** -24

    def __init__(self, bins: int = 2048) -> None:
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0  # R: the histogram covers [-R, R]

    def update(self, x: np.ndarray) -> tuple[float, float] | None:
        """Count ``x``; returns its ``(min, max)`` (``None`` when empty) for the min/max observer."""
        if x.size == 0:
            return None
        v = np.asarray(x, dtype=np.float32).ravel()
        lo, hi = float(v.min()), float(v.max())
        amax = max(hi, -lo)
        if self.range == 0.0:
            self.range = max(2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 0.0, self.MIN_RANGE)
        while amax > self.range:
            self._grow()
        # float32 and truncation (v + R >= 0, so truncation is floor): the float64 floor of the
        # first version took two thirds of PP-OCR's calibration time for the same counts up to
        # values within a float32 rounding of a bin edge
        idx = ((v + np.float32(self.range)) * np.float32(self.bins / (2.0 * self.range))).astype(np.intp)
        np.minimum(idx, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        return lo, hi

    def _grow(self) -> None:
        """Double the range: bin pairs merge into the middle half."""
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.zeros_like(self.counts)
        q = self.bins // 4
        self.counts[q:q + merged.size] = merged
        self.range *= 2.0

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
        """Numbers held (constant: ``bins + 1``)."""
        return int(self.counts.size) + 1
