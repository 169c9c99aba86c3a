"""The entropy (KL) threshold search scans every candidate at once and must choose exactly what the
one-threshold-at-a-time search chose before (session 37: 0.22 s a tensor, FlowNetC's 383 tensors
spent 86 of build's 112 s there on bernoulli2, round 28a).

The previous one-candidate-at-a-time search is kept below as the reference, and both run on
random and adversarial histograms: ties, empty bins, a single spike, heavy tails, point masses,
one-sided and all-zero halves, and real calibrated data shapes (ReLU zeros, backgrounds).
"""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.quant import thresholds
from npuflow.quant.observers import HistogramObserver
from npuflow.quant.thresholds import _entropy_sides, asymmetric_entropy_range, entropy_threshold


# ---- reference: the search as it was before the scan (npuflow/quant/thresholds.py at dde311c): every
# candidate scored by the exact per-threshold divergence, ``thresholds._divergence``, which the scan leaves as it was
# (it recomputes the near-least candidates with it) ----

_ref_divergence = thresholds._divergence


def ref_entropy_threshold(hist: HistogramObserver, qmax: int) -> float:
    sides = _entropy_sides(hist)
    levels = qmax + 1
    used = np.flatnonzero((sides[0][0] > 0) | (sides[1][0] > 0))
    if used.size == 0:
        return float(hist.range)
    end = int(used[-1]) + 1
    if end <= levels:
        return float(end * hist.bin_width)
    candidates = range(levels, end + 1)
    divergences = np.array([_ref_divergence(sides, i, levels) for i in candidates])
    best = int(np.flatnonzero(divergences == divergences.min())[-1])
    return float(candidates[best] * hist.bin_width)


def ref_side_entropy(side, levels: int, bin_width: float) -> tuple[float, float]:
    used = np.flatnonzero(side[0] > 0)
    if used.size == 0:
        return 0.0, 0.0
    end = int(used[-1]) + 1
    if end <= levels:
        return float(end * bin_width), 0.0
    candidates = range(levels, end + 1)
    divergences = np.array([_ref_divergence((side,), i, levels) for i in candidates])
    best = int(np.flatnonzero(divergences == divergences.min())[-1])
    return float(candidates[best] * bin_width), float(divergences[best])


# ---- histograms ----

def from_counts(counts: np.ndarray, zeros: int = 0, rng_: float = 4.0) -> HistogramObserver:
    h = HistogramObserver(counts.size)
    h.counts = np.asarray(counts, dtype=np.int64)
    h.range = rng_
    h.zeros = min(zeros, int(h.counts[h.bins // 2]))
    return h


def observed(x: np.ndarray, bins: int = 2048) -> HistogramObserver:
    h = HistogramObserver(bins)
    h.update(np.asarray(x, dtype=np.float32))
    return h


def adversarial(bins: int = 2048) -> dict[str, HistogramObserver]:
    half = bins // 2
    r = np.random.default_rng(37)
    cases: dict[str, np.ndarray | HistogramObserver] = {}
    cases["all zero"] = np.zeros(bins)
    flat = np.zeros(bins)
    flat[:] = 5
    cases["flat (every candidate near-tied)"] = flat
    spike = np.zeros(bins)
    spike[half + 700] = 1000
    cases["one spike"] = spike
    spike2 = np.zeros(bins)
    spike2[half + 700] = 1000
    spike2[half - 3] = 1
    cases["one spike, one negative value"] = spike2
    sparse = np.zeros(bins)
    sparse[half + np.arange(0, half, 7)] = 3
    cases["every 7th bin (empty bins)"] = sparse
    comb = np.zeros(bins)
    comb[half::2] = 1
    comb[:half:2] = 1
    cases["comb, every other bin"] = comb
    spikes = r.integers(0, 3, bins)
    spikes[r.choice(bins, 40, replace=False)] += r.integers(100, 10_000, 40)
    cases["many point masses"] = spikes
    tail = np.zeros(bins)
    tail[half:] = (1e7 / (1 + np.arange(half)) ** 2).astype(np.int64)
    tail[-1] += 1
    cases["heavy tail to the last bin"] = tail
    tail_neg = tail[::-1].copy()
    cases["heavy tail, negative only"] = tail_neg
    only_last = np.zeros(bins)
    only_last[-1] = 1
    only_last[half] = 10
    cases["zero-ish then the top bin"] = only_last
    big = r.integers(10**9, 10**12, bins)
    cases["huge counts"] = big
    zeros_relu = np.zeros(bins)
    zeros_relu[half] = 900_000
    zeros_relu[half:half + 300] += r.integers(0, 50, 300)
    cases["relu zeros in bin half"] = from_counts(zeros_relu, zeros=900_000)
    short = np.zeros(bins)
    short[half:half + 129] = 1
    cases["just above levels"] = short
    short2 = np.zeros(bins)
    short2[half:half + 128] = 1
    cases["exactly levels"] = short2
    tie = np.zeros(bins)
    tie[half + 200] = 1
    tie[half - 201] = 1
    cases["two equal values, both signs"] = tie
    lone = np.zeros(bins)
    lone[half:half + 400] = 50
    lone[half + 400 + r.choice(500, 30, replace=False)] = r.integers(1, 3, 30)
    cases["lone counts past the bulk (whole point masses)"] = lone
    return {k: (v if isinstance(v, HistogramObserver) else from_counts(v)) for k, v in cases.items()}


def random_histograms(n: int, bins: int = 2048) -> list[HistogramObserver]:
    r = np.random.default_rng(2837)
    out = []
    for k in range(n):
        kind = k % 6
        size = int(r.integers(1000, 60_000))
        if kind == 0:
            x = r.standard_normal(size) * r.uniform(0.01, 10)
        elif kind == 1:
            x = np.maximum(r.standard_normal(size), 0.0)
        elif kind == 2:
            x = r.standard_t(1.5, size)  # heavy tails
        elif kind == 3:
            x = r.laplace(size=size)
            x[r.random(size) < 0.3] = -0.42  # constant background
        elif kind == 4:
            x = np.round(r.standard_normal(size) * 4) / 4  # a few values, ties everywhere
        else:
            x = r.exponential(size=size) * r.choice([-1.0, 1.0], size, p=[0.1, 0.9])
        out.append(observed(x, bins))
    return out


ADVERSARIAL = adversarial()


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("qmax", [127, 7])
def test_scan_chooses_the_reference_threshold_on_adversarial_histograms(name, qmax):
    h = ADVERSARIAL[name]
    assert entropy_threshold(h, qmax) == ref_entropy_threshold(h, qmax), name


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("levels", [255, 128, 37, 1])
def test_one_sided_search_gives_the_reference_threshold_and_divergence(name, levels):
    h = ADVERSARIAL[name]
    for side in _entropy_sides(h):
        assert thresholds._side_entropy(side, levels, h.bin_width) == ref_side_entropy(side, levels, h.bin_width)


def test_scan_chooses_the_reference_threshold_on_random_histograms():
    hists = random_histograms(36) + random_histograms(6, bins=512)
    for k, h in enumerate(hists):
        for qmax in (127, 15):
            assert entropy_threshold(h, qmax) == ref_entropy_threshold(h, qmax), (k, qmax)
        for side in _entropy_sides(h):
            assert thresholds._side_entropy(side, 200, h.bin_width) == ref_side_entropy(side, 200, h.bin_width), k


def test_asymmetric_range_unchanged(monkeypatch):
    hists = random_histograms(12) + list(ADVERSARIAL.values())
    new = []
    for h in hists:
        lo, hi = float(-h.range), float(h.range)
        new.append(asymmetric_entropy_range(h, lo, hi, 8, False))
    monkeypatch.setattr(thresholds, "_side_entropy", ref_side_entropy)
    old = [asymmetric_entropy_range(h, float(-h.range), float(h.range), 8, False) for h in hists]
    assert new == old


def test_search_evaluates_few_thresholds_exactly(monkeypatch):
    """The speed: of the ~900 candidate thresholds of a 2048-bin histogram only those whose scanned
    divergence is within the margin of the least are evaluated one by one (before: every one)."""
    calls = []
    exact = thresholds._divergence
    monkeypatch.setattr(thresholds, "_divergence", lambda *a: calls.append(a[1]) or exact(*a))
    x = np.random.default_rng(1).standard_t(3, 100_000)
    h = observed(x)
    t = entropy_threshold(h, 127)
    monkeypatch.setattr(thresholds, "_divergence", exact)
    assert t == ref_entropy_threshold(h, 127)
    assert 1 <= len(calls) <= 8, len(calls)


def test_scan_error_is_well_inside_the_margin():
    """The exactness argument: every candidate's scanned divergence lies within half the margin of
    its exact one, so no least candidate can fall outside the exactly evaluated set."""
    for h in random_histograms(12) + list(ADVERSARIAL.values()):
        sides = _entropy_sides(h)
        used = np.flatnonzero((sides[0][0] > 0) | (sides[1][0] > 0))
        if used.size == 0 or used[-1] + 1 <= 128:
            continue
        candidates = np.arange(128, used[-1] + 2)
        scanned = thresholds._divergence_scan(sides, candidates, 128)
        exact = np.array([_ref_divergence(sides, int(i), 128) for i in candidates])
        assert np.max(np.abs(scanned - exact)) < thresholds._SCAN_MARGIN / 100
