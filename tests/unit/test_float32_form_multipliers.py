"""The compiler's fixed-point multipliers with a float32 form (bernoulli2): a channel whose
nearest 31-bit multiplier no float32 multiplier reproduces takes the nearest one within 2^-23 of
the model's ratio that one does (``numerics.multipliers_with_float32_form``), so the runtime runs
it on ``QLinearConv`` without fix channels; the target's codes are what that multiplier computes,
exactly, on every reachable accumulator."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import npuflow
from benchmarks import datasets as D
from npuflow import numerics as nm
from npuflow.check.quant_facts import QParams
from npuflow.compiler.epilogue import accumulator_range, make_epilogue
from npuflow.runtime import fused_fixconv
from tests import fixture_models

#: a YOLOv8n bernoulli2 channel (test_runtime_fixed_fixes): its exact product lies 1.1e-7 above the
#: tie 42.5 at accumulator 63006, where float32 rounds onto the tie and then to even
MULT, SHIFT = 1483326804, 41
BOUND = 128 * (1 + 27 * 63)  # +- its inputs' reach times sum|w| (1x1 weights 1, then 63 of 27)


def _codes(acc: np.ndarray, m: int, s: int) -> np.ndarray:
    return np.clip(nm.requantize_fixed_point(acc, m, s, "half_even"), -128, 127)


def _float32_codes(acc: np.ndarray, m32: np.float32) -> np.ndarray:
    """``QLinearConv``'s codes (``numerics.requantize_float``, MLAS) with multiplier ``m32``."""
    return np.clip(nm.requantize_float(acc, m32, "half_even"), -128, 127)


def _form(m: int, s: int, lo: int, hi: int) -> float:
    return float(nm.fixed_point_as_float32([m], [s], "half_even", [lo], [hi], -128, 127, partial=True)[0])


def test_a_channel_without_a_float32_form_gets_a_nearby_multiplier_exact_on_every_accumulator():
    real = np.ldexp(float(MULT), -SHIFT)  # the model's ratio, whose nearest 31-bit multiplier is MULT
    assert nm.quantize_multiplier(real) == (MULT, SHIFT)
    assert np.isnan(_form(MULT, SHIFT, -BOUND, BOUND))  # no float32 multiplier gives its codes
    (m,), (s,) = nm.multipliers_with_float32_form([real], [-BOUND], [BOUND], -128, 127, "half_even")
    assert s == SHIFT and m != MULT and abs(np.ldexp(float(m), -s) - real) <= real * nm.FLOAT32_FORM_TOLERANCE
    m32 = np.float32(_form(m, s, -BOUND, BOUND))
    every = np.arange(-BOUND, BOUND + 1)
    assert np.array_equal(_float32_codes(every, m32), _codes(every, m, s))  # exact on every accumulator
    moved = np.flatnonzero(_codes(every, m, s) != _codes(every, MULT, SHIFT))
    # the move changes a code only where the exact product lies within float32's precision of a tie
    assert 0 < len(moved) <= 8 and np.all(np.abs(_codes(every[moved], m, s) - _codes(every[moved], MULT, SHIFT)) == 1)
    near = np.abs(every[moved] * real - np.round(every[moved] * real - 0.5) - 0.5)
    assert np.all(near <= np.abs(every[moved] * real) * 2.0 ** -22), near
    # without room to move (tolerance 0) the channel keeps its multiplier
    kept = nm.multipliers_with_float32_form([real], [-BOUND], [BOUND], -128, 127, "half_even", tolerance=0)
    assert kept[0][0] == MULT


@settings(max_examples=40, deadline=None)
@given(st.floats(2.0 ** -13, 2.0 ** -4), st.integers(2_000, 150_000), st.integers(-20_000, 20_000))
def test_chosen_multipliers_are_near_the_ratio_and_exact_in_float32_over_the_whole_range(real, reach, bias):
    lo, hi = bias - reach, bias + reach
    (m,), (s,) = nm.multipliers_with_float32_form([real], [lo], [hi], -128, 127, "half_even")
    m0, s0 = nm.quantize_multiplier(real)
    assert s == s0 and abs(np.ldexp(float(m), -s) - real) <= real * nm.FLOAT32_FORM_TOLERANCE
    form = _form(m, s, lo, hi)
    if m != m0:  # moved only to get a float32 form: the nearest one had none
        assert np.isnan(_form(m0, s0, lo, hi)) and np.isfinite(form)
    if np.isfinite(form):
        every = np.arange(lo, hi + 1)
        assert np.array_equal(_float32_codes(every, np.float32(form)), _codes(every, m, s))


def test_compiler_epilogue_takes_the_float32_form_where_it_knows_the_accumulators():
    real = np.ldexp(float(MULT), -SHIFT)
    out = QParams("int8", np.float32(0.0625), np.int64(0))  # a power of two: the ratio stays exact
    args = (None, "y", [], np.array([real * 0.0625]), out, None)
    plain = make_epilogue(*args)
    w = np.full((1, 64, 1, 1), 27, np.int8)
    w[0, 0] = 1
    chosen = make_epilogue(*args, acc_range=accumulator_range(np.zeros(1, np.int64), w, 0, 128))
    assert plain["mode"] == chosen["mode"] == "fixed" and plain["multiplier"] == MULT
    assert chosen["shift"] == SHIFT and chosen["multiplier"] != MULT
    assert np.isfinite(_form(chosen["multiplier"], SHIFT, -BOUND, BOUND))
    assert accumulator_range(np.array([5]), w, 0, 128) == (5 - BOUND, 5 + BOUND)


def test_ppocr_rec_on_bernoulli2_needs_fix_channels_in_at_most_one_layer(monkeypatch):
    """PP-OCRv4 rec (issue 19's last row under ORT): 20 layers carried fix channels with the nearest
    multipliers (benchmarks/results/runtime_rec_b2_s34.md); the fused runs still equal the kernels."""
    samples = D.ocr_lines("calib", 5)[0]
    quantized = npuflow.quantize(str(fixture_models.ppocr_rec()), samples[:4], target="bernoulli2",
                                 input_shapes={"x": [1, 3, 48, 320]})
    compiled = npuflow.compile(quantized.model, "bernoulli2")
    real, fixed_layers = fused_fixconv.fixed_form, {}

    def record(g, op, blobs, *, depthwise):
        form = real(g, op, blobs, depthwise=depthwise)
        if form is not None and len(form[3]):
            fixed_layers[op["outputs"][0]] = len(form[3])
        return form

    monkeypatch.setattr(fused_fixconv, "fixed_form", record)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    assert len(fixed_layers) <= 1, fixed_layers
    a, b = fast.run(samples[4]), ref.run(samples[4])
    assert all(np.array_equal(a[k], b[k]) for k in b)
