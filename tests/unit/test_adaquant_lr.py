"""AdaQuant's default learning rate moves weights by whole steps (issue 18).

The quantized model feeds a layer inputs that differ from the float ones (coarse power-of-two
activation codes); AdaQuant is there to move weights and bias so that the layer compensates.
With the former default (1e-4 steps per iteration) a weight moved ~0.03 step in a whole run and
PP-OCRv4 rec on B4096 stayed at ~6 % lines; 3e-3 gave 30 %.  A large rate must still never
return a worse rounding than the best iterate it met (on exact inputs, nearest rounding).
"""

from __future__ import annotations

import numpy as np
import pytest

from npuflow import numerics
from npuflow.quant.algorithms.adaquant import DEFAULT_LR, adaquant
from npuflow.quant.algorithms.layer_problem import LayerProblem


def _problem(seed: int, input_step: float | None) -> LayerProblem:
    """A 27-tap layer whose quantized-model inputs are ``x`` floored to ``input_step`` (an
    activation quantized with truncation and a coarse power-of-two scale), or exact."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(1, 16, 27)) * 0.2).astype(np.float32)
    x = np.maximum(rng.normal(size=(1, 27, 1024)), 0).astype(np.float32)
    xq = x if input_step is None else (np.floor(x / input_step) * input_step).astype(np.float32)
    b = (rng.normal(size=(1, 16, 1)) * 0.1).astype(np.float32)
    s = np.full((1, 16, 1), numerics.pow2_scale(numerics.pow2_fix_pos(np.abs(w).max())), np.float32)
    return LayerProblem(w, s, b, xq, np.matmul(w, x) + b, -127, 127, "std_round")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_default_rate_compensates_quantized_inputs(seed, backend):
    p = _problem(seed, 2.0 ** -4)
    nearest = p.error(p.nearest_codes())
    codes, bias = adaquant(p, iters=150, backend=backend)
    slow_codes, slow_bias = adaquant(p, iters=150, lr=1e-4, backend=backend)
    assert DEFAULT_LR >= 1e-3
    assert p.error(codes, bias) < 0.75 * nearest                 # measured 0.65-0.70
    assert p.error(slow_codes, slow_bias) > 0.8 * nearest       # the former default: 0.85-0.90
    assert np.mean(codes != p.nearest_codes()) > 0.05            # roundings really change
    assert np.all(np.abs(codes - p.nearest_codes()) <= 3)


@pytest.mark.parametrize("lr", [DEFAULT_LR, 1e-2])
def test_large_rate_returns_the_best_iterate(lr):
    """Exact inputs: nothing to compensate, the straight-through walk only adds rounding noise."""
    p = _problem(0, None)
    codes, bias = adaquant(p, iters=200, lr=lr)
    assert p.error(codes, bias) <= p.error(p.nearest_codes())
