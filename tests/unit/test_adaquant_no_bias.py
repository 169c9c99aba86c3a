"""A layer with no bias (``LayerProblem.has_bias`` False) gets no learned bias from AdaQuant (issue 18).

The written layer has nowhere to hold one (a ``Conv`` without a bias input, a ``MatMul`` with no bias
``Add`` after it), so a bias the solver scored would be dropped on writing: the solvers must return
the problem's own (zero) bias and codes chosen without one.  The floored inputs shift the layer's mean
output, which is exactly what a learned bias would absorb.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from npuflow import numerics
from npuflow.quant.algorithms.adaquant import adaquant, adaquant_threshold
from npuflow.quant.algorithms.layer_problem import LayerProblem


def _problem(has_bias: bool) -> LayerProblem:
    """16 outputs, 27 taps, no bias; inputs floored to 1/16 (their mean drops by ~1/32)."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(1, 16, 27)) * 0.2).astype(np.float32)
    x = np.maximum(rng.normal(size=(1, 27, 1024)), 0).astype(np.float32)
    xq = (np.floor(x * 16) / 16).astype(np.float32)
    s = np.full((1, 16, 1), numerics.pow2_scale(numerics.pow2_fix_pos(np.abs(w).max())), np.float32)
    b = np.zeros((1, 16, 1), np.float32)
    return LayerProblem(w, s, b, xq, np.matmul(w, x), -128, 127, "half_up", has_bias=has_bias)


SOLVERS = {
    "numpy": lambda p: adaquant(p, iters=100, backend="numpy"),
    "torch": lambda p: adaquant(p, iters=100, backend="torch"),
    "threshold": lambda p: adaquant_threshold(p, iters=100)[:2],
}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_no_bias_layer_learns_no_bias(solver):
    with_bias = SOLVERS[solver](_problem(True))[1]
    assert np.abs(with_bias).max() > 0  # where a bias can be written, one is learned
    p = _problem(False)
    codes, bias = SOLVERS[solver](p)
    np.testing.assert_array_equal(bias, np.zeros_like(bias))  # before: the learned offset, later dropped
    assert p.error(codes) < p.error(p.nearest_codes())  # the weights still compensate


def test_no_bias_is_part_of_the_problems_cache_key():
    from npuflow.quant.algorithms.fast_finetune import FinetuneSettings, _cache_key

    st = FinetuneSettings(method="adaquant", round_mode="half_up", bias_round_mode="half_up")
    p = _problem(True)
    assert _cache_key(p, st) != _cache_key(replace(p, has_bias=False), st)  # old results with a bias not reused
