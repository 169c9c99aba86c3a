"""``columns: all`` takes every position by strided copies (:meth:`PatchSampler.sample`, session 37).

Asked for every position, the sampler used to draw a permutation of all of them, sort it and gather
the patches by index, which took most of GPTQ's ``columns: all`` time on EfficientNet-Lite0 (1,719 s
of fast finetune against 430 s at 2,048 columns).  The strided copy must give the very same columns in
the same order (so the same sums, halves and GPTQ codes) and draw nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.gptq import gptq
from npuflow.quant.algorithms.layer_stats import layer_stats
from npuflow.quant.algorithms.patches import PatchSampler

from tests.unit.test_adaquant_lr import _net
from tests.unit.test_gptq_stats import _feeds, _quantized

EVERY = ff.EVERY_POSITION

# (op, attributes, weight shape, input shape): dense, strided + padded, dilated, depthwise, grouped,
# asymmetric pads, 1-D, transposed (zeros interleaved), fully connected
CASES = [
    ("Conv", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (8, 3, 3, 3), (2, 3, 9, 11)),
    ("Conv", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]}, (4, 3, 3, 3), (1, 3, 10, 9)),
    ("Conv", {"kernel_shape": [3, 2], "dilations": [2, 3]}, (4, 2, 3, 2), (1, 2, 12, 13)),
    ("Conv", {"kernel_shape": [3, 3], "group": 6, "pads": [1, 1, 1, 1], "strides": [2, 1]}, (6, 1, 3, 3),
     (1, 6, 8, 7)),
    ("Conv", {"kernel_shape": [1, 1], "group": 2}, (4, 2, 1, 1), (3, 4, 5, 5)),
    ("Conv", {"kernel_shape": [5], "pads": [2, 1], "strides": [2]}, (4, 3, 5), (2, 3, 17)),
    ("ConvTranspose", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, (3, 4, 3, 3),
     (1, 3, 5, 6)),
    ("Gemm", {}, (8, 12), (7, 12)),
]


def _sampler(op: str, attrs: dict, wshape: tuple[int, ...], per_batch: int) -> PatchSampler:
    node = helper.make_node(op, ["x", "w"], ["y"], name=f"{op}_node", **attrs)
    return PatchSampler(node, wshape, per_batch)


def _gathered(s: PatchSampler, x: np.ndarray, count: int) -> np.ndarray:
    """Today's (the index gather's) columns at positions ``0 .. count - 1``: what a draw of every
    position, sorted, gathered."""
    if not s.conv:
        return x.reshape(-1, x.shape[-1])[np.arange(count)].T[None].astype(np.float32)
    xp, kernel, strides, dil, oh, ow = s._geometry(s._input(x))
    return s._gather(xp, kernel, strides, dil, oh, ow, np.arange(count))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_every_position_is_the_gather_of_every_position_value_for_value(case):
    op, attrs, wshape, xshape = case
    x = np.random.default_rng(1).normal(0, 1, xshape).astype(np.float32)
    s = _sampler(op, attrs, wshape, EVERY)
    got = s.sample(x, 3)
    count = s.count(x.shape)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape[2] == count
    assert np.array_equal(got, _gathered(s, x, count))   # exact: the same floats copied, no arithmetic
    # a sample of fewer positions is still drawn: its columns are among every position's, in order
    few = _sampler(op, attrs, wshape, count - 1).sample(x, 3)
    assert few.shape[2] == count - 1
    pos = [int(np.flatnonzero((got == few[:, :, [i]]).all(axis=(0, 1)))[0]) for i in range(count - 1)]
    assert pos == sorted(set(pos))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_every_position_draws_and_gathers_nothing(case, monkeypatch):
    """The strided path neither draws a permutation of every position nor gathers by index (before:
    one draw and one gather per calibration sample and layer)."""
    op, attrs, wshape, xshape = case
    x = np.random.default_rng(2).normal(0, 1, xshape).astype(np.float32)
    s = _sampler(op, attrs, wshape, EVERY)

    def refuse(*_a, **_k):
        raise AssertionError("columns: all drew or gathered positions")

    monkeypatch.setattr(s, "_rng", refuse)
    monkeypatch.setattr(s, "_gather", refuse, raising=False)
    assert s.sample(x, 0).shape[2] == s.count(x.shape)


def test_every_position_is_fast_on_an_effnet_sized_layer():
    """EfficientNet-Lite0's first expanded layer: 96 channels at 112 x 112, 3x3 depthwise (12,544
    positions, K = 9 per group).  Before: a draw, a sort and a gather of every position (~0.3 s here);
    the strided copy takes a few milliseconds; bounded at a quarter of the gather's time measured here."""
    import time

    x = np.random.default_rng(0).normal(0, 1, (1, 96, 112, 112)).astype(np.float32)
    s = _sampler("Conv", {"kernel_shape": [3, 3], "group": 96, "pads": [1, 1, 1, 1]}, (96, 1, 3, 3), EVERY)
    count = s.count(x.shape)
    t0 = time.perf_counter()
    ref = _gathered(s, x, count)
    gathered = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = s.sample(x, 0)
    strided = time.perf_counter() - t0
    assert np.array_equal(got, ref)
    assert strided < 0.25 * gathered, (strided, gathered)


def test_gptq_codes_and_sums_with_every_position_equal_todays(tmp_path, monkeypatch):
    """Per layer of a small conv net (dense, depthwise, 1x1), 15 samples (the halves split inside one
    sample): the streamed sums of every position equal those from today's index gather exactly
    (same columns, same chunks, same order: tolerance 0), so do the halves and GPTQ's codes and bias."""
    model, feeds = _net(), _feeds(15, 10)
    qmodel = _quantized(model, feeds, tmp_path, monkeypatch)
    jobs = ff.layer_jobs(model, qmodel, EVERY, [])
    inputs, floats = ff.QuantizedInputs(qmodel, feeds), ff.QuantizedInputs(model, feeds)
    fast = [layer_stats(model, j, inputs, floats, "half_even", ff._with_linear_bias(model, qmodel, j)) for j in jobs]
    monkeypatch.setattr(PatchSampler, "_every_position",
                        lambda self, xp, kernel, strides, dil, oh, ow:
                        self._gather(xp, kernel, strides, dil, oh, ow, np.arange(xp.shape[0] * oh * ow)))
    slow = [layer_stats(model, j, inputs, floats, "half_even", ff._with_linear_bias(model, qmodel, j)) for j in jobs]
    for a, b in zip(fast, slow):
        assert [p.m for p in a.parts] == [p.m for p in b.parts] == [750, 750]
        for u, v in zip(a.key_arrays(), b.key_arrays()):
            assert np.array_equal(u, v)
        (ca, ba), (cb, bb) = gptq(a), gptq(b)
        assert np.array_equal(ca, cb) and np.array_equal(ba, bb)
