"""Fixed-point channels without an exact float32 multiplier (bernoulli2) on ``QLinearConv`` all the
same: ``fused_fixed.step_fixes`` proves a multiplier and a few fix channels, ``fused_fixconv.dense_fixed``
applies them with ``Min``/``Max``; codes equal ``numerics`` on every accumulator."""

from __future__ import annotations

import numpy as np

from npuflow import numerics as nm
from npuflow.runtime import fused_conv, fused_fixed, fused_graph
from tests.unit.test_runtime_fixed_qlinear import conv_graph, inputs_for, run_int8

CIN, TAP = 64, 27
#: channel 0: a YOLOv8n bernoulli2 channel (320, calibration of bench_runtime) whose exact product
#: lies 1.1e-7 above the tie 42.5 at accumulator 63006 (float32 rounds onto the tie, then to even)
#: and as far below -42.5 at -63006; channel 1: every step far from a tie
MULT = np.array([1483326804, 1518500251])
SHIFT = np.array([41, 31])
EP = {"mode": "fixed", "multiplier": MULT.tolist(), "shift": SHIFT.tolist(), "zp": 0, "round": "half_even",
      "dtype": "int8", "clamps": [], "scale": 0.05}
REACH = 128  # int8 codes, zero point 0


def _weights() -> np.ndarray:
    """1x1 weights (2, CIN): 1 then TAPs, so that an input reaches every accumulator up to 127 + 127*TAP*(CIN-1)."""
    w = np.full((2, CIN, 1, 1), TAP, np.int64)
    w[:, 0] = 1
    return w


def _inputs_for(acc: np.ndarray) -> np.ndarray:
    """Int8 codes (1, CIN, 1, len(acc)) whose accumulator with :func:`_weights` is ``acc``."""
    return inputs_for(acc, TAP, CIN)


def _every() -> np.ndarray:
    """Every accumulator channel 0 can hold (bias 0: +- REACH * sum |w|)."""
    bound = REACH * int(np.abs(_weights()[0]).sum())
    return np.arange(-bound, bound + 1)


def _exact(acc: np.ndarray, c: int) -> np.ndarray:
    return np.clip(nm.requantize_fixed_point(acc, MULT[c], SHIFT[c], "half_even"), -128, 127)


def _kernel(acc: np.ndarray, m32: np.float32) -> np.ndarray:
    """``QLinearConv``'s codes (``numerics.requantize_float``) with multiplier ``m32``."""
    return np.clip(nm.requantize_float(acc, m32, "half_even"), -128, 127)


def test_step_fixes_make_a_channel_without_exact_multiplier_exact_on_every_accumulator():
    w, bias = _weights(), np.zeros(2, np.int64)
    _, _, mult = fused_fixed.kernel_form(w, bias, EP, REACH, partial=True)
    assert np.isnan(mult[0]) and np.isfinite(mult[1])
    fixes = fused_fixed.step_fixes(w, bias, EP, REACH, np.array([0]))
    late, early = [f for f in fixes.late[0] if f], [f for f in fixes.early[0] if f]
    assert np.isfinite(fixes.mult[0]) and late and early, (fixes.mult, late, early)
    acc = _every()
    base = _kernel(acc, fixes.mult[0]) + 128  # bytes: codes minus the clamp's lowest, -128
    want = _exact(acc, 0) + 128
    assert not np.array_equal(base, want)  # the kernel alone is wrong somewhere ...
    assert np.array_equal(fused_fixed.fixed_bytes(base, acc, late, early, 255), want)  # ... fixed everywhere


def test_step_fixes_take_the_multiplier_that_needs_the_fewest_fixes():
    # a channel whose nearest float32 multiplier steps wrongly at four accumulators, a neighbour of
    # it at two: each fix is one more output channel of the layer's kernel, so the neighbour serves
    m, s = 1426117242, 41
    ep = {**EP, "multiplier": [m], "shift": [s]}
    w, bias = _weights()[:1], np.zeros(1, np.int64)
    fixes = fused_fixed.step_fixes(w, bias, ep, REACH, np.array([0]))
    late, early = [f for f in fixes.late[0] if f], [f for f in fixes.early[0] if f]
    acc = _every()
    want = np.clip(nm.requantize_fixed_point(acc, m, s, "half_even"), -128, 127) + 128

    def wrong_steps(m32: np.float32) -> int:  # accumulators where the kernel's bytes step wrongly
        return int(np.count_nonzero(np.diff((_kernel(acc, m32) + 128 != want).astype(np.int8)) == 1))

    nearest = np.float32(np.ldexp(float(m), -s))
    assert wrong_steps(nearest) == 4 and len(late) + len(early) == wrong_steps(fixes.mult[0]) == 2, (late, early)
    assert np.array_equal(fused_fixed.fixed_bytes(_kernel(acc, fixes.mult[0]) + 128, acc, late, early, 255), want)


def test_step_fixes_check_refuses_what_does_not_give_the_exact_codes(monkeypatch):
    w, bias, rows = _weights(), np.zeros(2, np.int64), np.array([0])
    assert np.isnan(fused_fixed.step_fixes(w, bias, {**EP, "round": "half_up"}, REACH, rows).mult[0])  # MLAS: even
    real = fused_fixed.fixed_bytes
    # a fix that the graph would apply wrongly (early fixes left out) fails the check at the steps
    monkeypatch.setattr(fused_fixed, "fixed_bytes", lambda c, acc, late, early, span: real(c, acc, late, [], span))
    assert np.isnan(fused_fixed.step_fixes(w, bias, EP, REACH, rows).mult[0])
    monkeypatch.setattr(fused_fixed, "fixed_bytes", real)
    monkeypatch.setattr(fused_fixed, "FIX_ROUNDS", 0)  # no fixes allowed: no candidate is exact alone
    assert np.isnan(fused_fixed.step_fixes(w, bias, EP, REACH, rows).mult[0])


def test_fixed_channels_run_on_one_qlinearconv_equal_to_numerics():
    every = _every()
    ties = np.arange(-127, 128) - 0.5
    near = np.unique(np.concatenate([np.ceil(ties * 2.0 ** s / m) for m, s in zip(MULT, SHIFT)]))
    acc = np.unique(np.clip((near[:, None] + np.arange(-3, 4)).reshape(-1), every[0], every[-1]).astype(np.int64))
    acc = np.concatenate([acc, every[::97]])  # beside every step of both channels, and a spread of the rest
    acc = acc[(acc >= -128 * TAP * (CIN - 1)) & (acc <= 127 * TAP * (CIN - 1))]  # what inputs reach
    x = _inputs_for(acc)
    g = conv_graph(x, len(acc), EP, _weights())
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("QLinearConv") == 1 and "ConvInteger" not in kinds and "Conv" not in kinds, kinds
    assert "Max" in kinds and "Min" in kinds, kinds
    # the fixed channel 0 after the kernel's channel 1: back in order by a Concat, not a Gather of
    # channels, which ONNX Runtime runs channels-first between layout transposes (dense_fixed)
    assert "Gather" not in kinds and kinds.count("Concat") == 1, kinds
    got = run_int8(g, x).reshape(2, -1)
    assert np.array_equal(got[0], _exact(acc, 0)) and np.array_equal(got[1], _exact(acc, 1))
    assert not np.array_equal(_kernel(acc, np.float32(np.ldexp(float(MULT[0]), -int(SHIFT[0])))), got[0])


def _depthwise(acc: np.ndarray, ep: dict) -> tuple[fused_graph.Graph, np.ndarray]:
    """The two channels of :func:`_weights` as a depthwise convolution (kernel 1 x CIN, stride CIN
    along the width: one output per CIN inputs of its own channel) of inputs giving ``acc``."""
    taps = _inputs_for(acc)[0, :, 0, :].T.reshape(-1)  # position j's CIN taps side by side
    x = np.stack([taps, taps]).reshape(1, 2, 1, -1)
    return conv_graph(x, len(acc), ep, _weights().reshape(2, 1, 1, CIN), group=2, stride=CIN), x


def test_depthwise_fixed_channels_run_on_qlinearconv_equal_to_numerics():
    """A depthwise layer with a channel without an exact multiplier: one depthwise QLinearConv of
    every channel and whole-width fix convolutions (``fused_fixconv.depthwise_fixed``), equal to
    ``numerics`` beside every step, where the nearest multiplier alone is not."""
    every = _every()
    ties = np.arange(-127, 128) - 0.5
    near = np.unique(np.concatenate([np.ceil(ties * 2.0 ** s / m) for m, s in zip(MULT, SHIFT)]))
    acc = np.unique(np.clip((near[:, None] + np.arange(-3, 4)).reshape(-1), every[0], every[-1]).astype(np.int64))
    acc = acc[(acc >= -128 * TAP * (CIN - 1)) & (acc <= 127 * TAP * (CIN - 1))]  # what inputs reach
    g, x = _depthwise(acc, EP)
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("QLinearConv") >= 2 and "Conv" not in kinds and "ConvInteger" not in kinds, kinds
    assert "Gather" not in kinds and "Concat" not in kinds and "Max" in kinds and "Min" in kinds, kinds
    got = run_int8(g, x).reshape(2, -1)
    assert np.array_equal(got[0], _exact(acc, 0)) and np.array_equal(got[1], _exact(acc, 1))
    assert not np.array_equal(_kernel(acc, np.float32(np.ldexp(float(MULT[0]), -int(SHIFT[0])))), got[0])


def test_depthwise_without_fixes_keeps_the_exact_forms():
    """Ties away from zero (not MLAS' rounding): no fixes are proved, the depthwise layer keeps the
    float forms, exact all the same."""
    ep = {**EP, "round": "half_up"}
    acc = _every()[::211]
    acc = acc[(acc >= -128 * TAP * (CIN - 1)) & (acc <= 127 * TAP * (CIN - 1))]
    g, x = _depthwise(acc, ep)
    assert "QLinearConv" not in [n.op_type for n in g.nodes]
    got = run_int8(g, x).reshape(2, -1)
    for c in (0, 1):
        assert np.array_equal(got[c], np.clip(nm.requantize_fixed_point(acc, MULT[c], SHIFT[c], "half_up"), -128, 127))


def test_fix_bounds_have_the_output_shape():
    """The constant operand of each fix's ``Min``/``Max`` spans the output's positions, not
    ``(1, C, 1, 1)``: ONNX Runtime runs these ops channels-last, where a per-channel operand
    broadcasts along the innermost axis, slowly (``fused_fixconv.bound``)."""
    acc = _every()[::4001]
    acc = acc[(acc >= -128 * TAP * (CIN - 1)) & (acc <= 127 * TAP * (CIN - 1))]
    for g in (_depthwise(acc, EP)[0], conv_graph(_inputs_for(acc), len(acc), EP, _weights())):  # and the dense layer
        consts = {i.name: list(i.dims) for i in g.inits}
        bounds = [consts[t] for n in g.nodes if n.op_type in ("Min", "Max") for t in n.input if t in consts]
        assert bounds and all(b[2:] == [1, len(acc)] for b in bounds), bounds


def test_a_table_input_proves_the_multiplier_over_its_own_codes_only():
    """The input is a table whose codes lie in -3..127 (a hard-swish's, ``Graph.tables``): the
    accumulators reach -3 * sum|w| .. 127 * sum|w| (``fused_graph.code_span``), not +-128 * sum|w|,
    so channel 0's near-tie at -63005 is out of reach: its late step at 63006 needs one fix channel,
    not also an early one (before: two fix channels, two ``Min`` and two ``Max``), codes equal
    ``numerics``."""
    every = _every()
    ties = np.arange(-127, 128) - 0.5
    near = np.unique(np.concatenate([np.ceil(ties * 2.0 ** s / m) for m, s in zip(MULT, SHIFT)]))
    acc = np.unique(np.clip((near[:, None] + np.arange(-3, 4)).reshape(-1), 0, every[-1]).astype(np.int64))
    acc = acc[acc <= 127 * TAP * (CIN - 1)]  # what non-negative inputs reach, 63006 among them
    assert 63006 in acc
    x = _inputs_for(acc)
    assert x.min() >= 0
    shape = [1, 2, 1, len(acc)]
    g = fused_graph.Graph({"x": {"shape": list(x.shape), "dtype": "int8"}, "y": {"shape": shape, "dtype": "int8"},
                           "s": {"shape": list(x.shape), "dtype": "int8"}})
    g.tables["x"] = ("s", np.clip(np.arange(-128, 128), -3, 127))  # x's codes for every code of s
    assert fused_graph.code_span(g, "x", "int8", 0) == (3, 127) and fused_graph.code_span(g, "s", "int8", 0) == (128, 127)
    op = {"op": "conv", "name": "c", "inputs": ["x"], "outputs": ["y"],
          "attrs": {"in_shape": list(x.shape), "out_shape": shape, "pads": [0, 0, 0, 0], "strides": [1, 1],
                    "dilations": [1, 1], "group": 1, "x_zp": 0, "lshift": 0, "epilogue": EP}}
    fused_conv.conv(g, op, {"w": _weights(), "b": np.zeros(2, np.int64)})
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("QLinearConv") == 1 and kinds.count("Min") == kinds.count("Max") == 1, kinds
    got = run_int8(g, x).reshape(2, -1)
    assert np.array_equal(got[0], _exact(acc, 0)) and np.array_equal(got[1], _exact(acc, 1))
