"""Layer-wise conformance tools (issue 16): ``Session.run_op`` runs one accelerator op on given
integer inputs, and the requantisation stays exact for the huge shifts of nearly dead channels.

PP-OCRv4 det quantized for cpu-int8 has 1x1 convolutions with channels whose weights are ~0
(weight scale 1.6e-16, bias saturated at -2^31): the fixed-point requantisation shift of such a
channel is 71-86, and numpy shifts by 64 or more do not divide, so every output of the channel
came out one step below ONNX Runtime's (p2o.Conv.30/31 with noise calibration: 300 of 38,400 codes each).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import npuflow
from npuflow import numerics as nm
from npuflow.errors import NpuflowError
from tests.compile_check import accelerator_ops, compare_layerwise_with_ort, compare_with_ort
from tests.qdq_builder import Builder

CPU = "cpu-int8"
MODES = ("half_even", "half_up", "half_down", "std_round")


def _exact(a: int, shift: int, mode: str) -> int:
    v = Fraction(a, 2 ** shift)
    floor = v.numerator // v.denominator
    if v - floor != Fraction(1, 2):
        return floor + int(v - floor > Fraction(1, 2))
    return {"half_even": floor + floor % 2, "half_up": floor + 1, "half_down": floor,
            "std_round": floor + int(v > 0)}[mode]


@pytest.mark.parametrize("mode", MODES)
def test_shift_round_is_exact_for_shifts_of_63_and_more(mode):
    """Products of a 31-bit accumulator and a 31-bit multiplier stay below 2^62 in magnitude."""
    rng = np.random.default_rng(0)
    acc = np.concatenate([[1 - 2 ** 62, 2 ** 62 - 1, 3 * 2 ** 60, -1, 0, 1],
                          rng.integers(1 - 2 ** 62, 2 ** 62, 50)]).astype(np.int64)
    for shift in (62, 63, 64, 71, 86, 100):
        want = [_exact(int(a), shift, mode) for a in acc]
        assert nm.shift_round(acc, shift, mode).tolist() == want, shift
        assert nm.shift_round(acc, np.full(acc.shape, shift), mode).tolist() == want, shift


def _dead_channel_conv() -> tuple:
    """Float-scale conv (asymmetric input, per-channel weights) whose channel 1 is nearly dead."""
    rng = np.random.default_rng(1)
    b = Builder("half_even")
    s_in = 0.0077521
    x = b.input("x", [1, 16, 5, 5], s_in, zp=-120)
    w = rng.normal(0, 0.1, (4, 16, 1, 1)).astype(np.float32)
    w[1] = 2e-16 * np.sign(w[1])
    w_scale = np.abs(w).reshape(4, -1).max(1) / 127
    wq = b.weight("w", w, w_scale.astype(np.float32), axis=0)
    bias = b.bias("b", np.array([0.1, -1.0, 0.0, -0.2], np.float32), (s_in * w_scale).astype(np.float32))
    y = b.quantize(b.node("Conv", [b.dq(x), wq, bias], "conv"), 0.0397, zp=25)
    b.output(y)
    model = b.model()
    return model, {"x": rng.uniform(-0.9, 1.0, (1, 16, 5, 5)).astype(np.float32)}


def test_nearly_dead_channel_equals_onnx_runtime():
    model, feeds = _dead_channel_conv()
    assert max(compare_layerwise_with_ort(model, feeds, CPU).values()) == 0
    assert max(compare_with_ort(model, feeds, CPU, ("disable", "all")).values()) == 0


def test_run_op_equals_the_op_in_a_whole_run(tmp_path):
    model, feeds = _dead_channel_conv()
    compiled = npuflow.compile(model, CPU)
    sess = npuflow.Session(compiled)
    whole = sess.run(feeds, dump_dir=tmp_path)
    (op,) = [op for op in accelerator_ops(compiled) if op["op"] == "conv"]
    inputs = {t: np.load(tmp_path / f"{t}.npy") for t in op["inputs"]}
    out = sess.run_op(op["name"], inputs)
    assert list(out) == op["outputs"]
    assert np.array_equal(out[op["outputs"][0]], np.load(tmp_path / f"{op['outputs'][0]}.npy"))
    assert whole  # the same session still runs whole frames


@pytest.mark.parametrize(("name", "inputs", "code"), [
    ("no_such_node", {}, "NPF_RUNTIME_UNKNOWN_OP"),
    ("conv", {}, "NPF_RUNTIME_MISSING_INPUT"),
    ("conv", {"x_q": np.zeros((1, 16, 5, 5), np.float32)}, "NPF_RUNTIME_INPUT_DTYPE"),
    ("conv", {"x_q": np.zeros((1, 16, 5, 4), np.int8)}, "NPF_RUNTIME_INPUT_SHAPE"),
])
def test_run_op_refuses_bad_requests_with_codes(name, inputs, code):
    sess = npuflow.Session(npuflow.compile(_dead_channel_conv()[0], CPU))
    with pytest.raises(NpuflowError) as e:
        sess.run_op(name, inputs)
    assert e.value.code == code
