"""Streaming observers and calibration methods: bounded state, exact range growth, sane thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow import numerics
from npuflow.quant.calibrate import collect
from npuflow.quant.observers import HistogramObserver, MinMaxObserver
from npuflow.quant.thresholds import (entropy_threshold, mse_threshold, percentile_abs, pow2_position,
                                      symmetric_threshold)

from .quant_nets import two_conv_net


def test_minmax_tracks_extremes_over_shapes():
    mm = MinMaxObserver()
    mm.update(np.array([[1.0, -2.0]]))
    mm.update(np.array([0.5, 3.0, -1.0]))
    assert (mm.min, mm.max, mm.amax, mm.count) == (-2.0, 3.0, 3.0, 5)


def test_histogram_growth_keeps_every_count():
    h = HistogramObserver(bins=64)
    h.update(np.array([0.1, -0.2, 0.3], np.float32))
    assert h.range == 0.5
    h.update(np.array([3.5, -7.0], np.float32))  # range doubles 0.5 -> 8
    assert h.range == 8.0 and h.counts.sum() == 5 and h.counts.size == 64
    edges = h.edges()
    # every value still sits in the bin that covers it
    for v in (0.1, -0.2, 0.3, 3.5, -7.0):
        k = int(np.searchsorted(edges, v, side="right") - 1)
        assert h.counts[k] >= 1


def test_calibration_state_does_not_grow_with_sample_count():
    model = two_conv_net()
    tensors = ["x", "r1", "y"]
    rng = np.random.default_rng(0)

    def data(n):
        return ({"x": rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)} for _ in range(n))

    small, _ = collect(model, tensors, set(tensors), data(5), bins=256)
    large, kept = collect(model, tensors, set(tensors), data(60), bins=256, keep=2)
    assert large.samples == 60 and len(kept) == 2
    assert small.state_size() == large.state_size()
    assert large.hist["x"].counts.sum() == 60 * 3 * 6 * 6


def test_thresholds_on_a_known_distribution():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 200_000).astype(np.float32)
    x[0] = 40.0  # one outlier
    h = HistogramObserver(bins=4096)
    h.update(x)
    amax = float(np.abs(x).max())
    p = percentile_abs(h, 99.9)
    assert 3.0 < p < 3.6  # 99.9 % of |N(0,1)| lies below ~3.29
    assert 3.0 < mse_threshold(h, amax, 127, "half_even") < 0.9 * amax
    assert 2.0 < entropy_threshold(h, 127) < 0.9 * amax
    assert symmetric_threshold("minmax", amax, h, 8, 99.9, "half_even") == amax
    auto = symmetric_threshold("auto", amax, h, 8, 99.9, "half_even")
    assert auto < amax
    # power-of-two search moves the fix position past the outliers
    n_minmax = pow2_position("minmax", amax, h, 8, 99.99, "half_up")
    assert n_minmax == int(numerics.pow2_fix_pos(amax))
    assert pow2_position("mse", amax, h, 8, 99.99, "half_up") > n_minmax


def test_bins_must_be_multiple_of_four():
    with pytest.raises(ValueError):
        HistogramObserver(bins=30)
