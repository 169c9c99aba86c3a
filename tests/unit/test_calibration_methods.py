"""Entropy (KL) calibration on tensors whose right threshold is known (issue 18).

Each case is a shape real models produce where TensorRT's search, as npuflow had it, picked a
threshold that clipped most of the signal: a ReLU output that is mostly exact zeros, an input
whose background sits on the negative side under its strokes' magnitudes, a small SE-block tensor
whose values all lie away from zero, and constant-background spikes.  Where every value carries
weight and nothing is an outlier (uniform data) the least divergence is at the largest value.
"""

from __future__ import annotations

import numpy as np

from npuflow import numerics
from npuflow.quant.observers import HistogramObserver
from npuflow.quant.thresholds import entropy_position, entropy_threshold, pow2_position, symmetric_threshold


def observed(x: np.ndarray, bins: int = 2048) -> HistogramObserver:
    h = HistogramObserver(bins)
    h.update(np.asarray(x, dtype=np.float32))
    return h


def test_observer_counts_exact_zeros_and_merges_them():
    a, b = observed(np.array([0.0, -0.0, 1e-6, 0.5])), observed(np.array([0.0, 3.0]))
    assert (a.zeros, b.zeros) == (2, 1)
    a.merge(b)
    assert a.zeros == 3 and a.copy().zeros == 3
    assert a.state_size() == a.bins + 3


def test_relu_output_of_mostly_zeros_keeps_its_range():
    """90 % exact zeros, the rest uniform on (0, 4]: before, the zero spike drove the threshold to
    the smallest searched, 1/8 of the histogram range (0.5 here), clipping 7/8 of the signal."""
    rng = np.random.default_rng(0)
    x = np.zeros(200_000)
    x[:20_000] = rng.uniform(0.0, 4.0, 20_000)
    t = entropy_threshold(observed(x), 127)
    assert 0.95 * 4.0 <= t <= 4.0 + 4.0 / 1024


def test_negative_background_does_not_fold_onto_the_strokes():
    """MNIST's input: 80 % background at -0.4242, strokes uniform up to 2.82.  Folded into |x|,
    the background spike sat among the strokes' bins and the threshold fell to 0.61."""
    rng = np.random.default_rng(1)
    x = np.full(100_000, -0.4242)
    x[:20_000] = rng.uniform(-0.4242, 2.8215, 20_000)
    t = entropy_threshold(observed(x), 127)
    assert t >= 0.95 * 2.8215


def test_sparse_tensor_away_from_zero_is_not_clipped_whole():
    """300 values in [-1.9, -0.8] (an SE block's pooled logits over a calibration set): without
    the clipped mass counted, a threshold below every value scored zero divergence."""
    rng = np.random.default_rng(2)
    x = -rng.uniform(0.8, 1.9, 300)
    h = observed(x)
    assert entropy_threshold(h, 127) >= 0.9 * float(np.abs(x).max())


def test_constant_background_spikes_do_not_pull_the_threshold_down():
    """A first convolution over text lines: per-channel constant background values, here 8
    spikes holding half the values, below 0.6, over a dense spread up to 10.  Point masses stay
    point masses when quantized; before they counted as spread over their group, and the
    threshold halved (PP-OCR cls on bernoulli2: ReLU outputs clipped at 0.19 of their range)."""
    rng = np.random.default_rng(3)
    dense = np.abs(rng.normal(0.0, 2.0, 100_000)).clip(0, 10.0)
    dense[0] = 10.0
    spikes = np.repeat(rng.uniform(0.05, 0.6, 8), 12_500)
    plain = entropy_threshold(observed(dense), 127)
    assert entropy_threshold(observed(np.concatenate((dense, spikes))), 127) >= 0.9 * plain


def test_gaussian_with_outlier_still_clips_the_outlier():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, 200_000)
    x[0] = 40.0
    t = entropy_threshold(observed(x, 4096), 127)
    assert 2.5 < t < 10.0


def test_equal_divergence_keeps_the_larger_threshold():
    """A single repeated value: every threshold from its bin on fits it exactly."""
    h = observed(np.full(1000, 3.0))
    assert entropy_threshold(h, 127) >= 3.0


def test_power_of_two_entropy_compares_positions():
    rng = np.random.default_rng(5)
    uniform = rng.uniform(-5.0, 5.0, 100_000)
    amax = float(np.abs(uniform).max())
    assert entropy_position(observed(uniform), amax, 8) == int(numerics.pow2_fix_pos(amax, 8))
    gauss = rng.normal(0.0, 1.0, 200_000)
    gauss[0] = 60.0
    amax = float(np.abs(gauss).max())
    n = pow2_position("entropy", amax, observed(gauss), 8, 99.99, "half_up")
    assert n > int(numerics.pow2_fix_pos(amax, 8))  # the outlier is clipped
    assert 2.5 < 127 * 2.0 ** -n < 10.0


def test_relu_zeros_on_power_of_two_keep_the_range():
    rng = np.random.default_rng(6)
    x = np.zeros(200_000)
    x[:20_000] = rng.uniform(0.0, 3.9, 20_000)  # 127 / 32 = 3.97 covers it at position 5
    amax = float(x.max())
    n = pow2_position("entropy", amax, observed(x), 8, 99.99, "half_up")
    assert n == int(numerics.pow2_fix_pos(amax, 8)) == 5


def test_auto_still_takes_entropy_as_a_candidate():
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, 100_000)
    h = observed(x)
    amax = float(np.abs(x).max())
    assert 0.0 < symmetric_threshold("auto", amax, h, 8, 99.99, "half_even") <= amax
