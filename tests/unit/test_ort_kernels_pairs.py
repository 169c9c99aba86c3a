"""Int8 weights on MLAS' saturating uint8 x int8 kernels where they cannot saturate
(``ort_kernels.mlas_pairs``, ``saturation_free``, ``conv_weight_form``, ``pairing_confirmed``): a
convolution whose same-sign weight pairs stay within 128 is exact on the faster kernel even on a
CPU whose 16-bit lanes saturate; any other keeps uint8 weights, and so does every convolution
where the probe does not find the lanes the rule names."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from npuflow import numerics as nm
from npuflow import ort_kernels
from npuflow.runtime import fused
from tests.unit.test_compiler_kernels import CPU, _x
from tests.unit.test_runtime_fused import _equal_fused_and_kernels
from tests.unit.test_runtime_qlinear import _uint8_block


def test_pairs_are_channels_last_taps_two_by_two():
    # (output channel, input channel, kernel row, kernel column) -> per output channel the taps
    # (row, column, channel), paired 0-1, 2-3, ...; an odd count ends with a zero partner
    w = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    a, b = ort_kernels.mlas_pairs(w, 1)
    taps = w.transpose(0, 2, 3, 1).reshape(2, 12)
    assert np.array_equal(a, taps[:, 0::2]) and np.array_equal(b, taps[:, 1::2])
    a, b = ort_kernels.mlas_pairs(np.ones((4, 3, 1, 1), np.int64), 1)
    assert a.shape == (4, 2) and np.array_equal(b[:, -1], np.zeros(4))
    a, b = ort_kernels.mlas_pairs(np.ones((6, 1, 3, 3), np.int64), 6)  # depthwise: no lanes
    assert a.size == b.size == 0


@pytest.mark.parametrize("pair,free", [((64, 64), True), ((127, 1), True), ((127, 2), False), ((-128, 0), True),
                                       ((-127, -1), True), ((-127, -2), False), ((127, -128), True),
                                       ((-100, -100), False)])
def test_bound_is_255_times_the_pair_within_int16(pair, free):
    w = np.array(pair).reshape(1, 2, 1, 1)
    assert ort_kernels.saturation_free(w, 1) == free
    assert (255 * abs(sum(pair)) <= 32767 or pair[0] * pair[1] <= 0) == free  # what a lane holds
    assert ort_kernels.saturation_free(np.array([127, 0, 2]).reshape(1, 3, 1, 1), 1)  # 127 and 2 in two lanes


def _free_weights(rng: np.random.Generator, cout: int, per: int, k: int) -> np.ndarray:
    """Saturation-free weights at the bound: pairs (127, 1) in random order and sign, then a
    random third of the pairs replaced by opposite-sign extremes (127, -128)."""
    w = ort_kernels._pair_weights(rng, cout, per * k * k)
    w = w.reshape(cout, k, k, per).transpose(0, 3, 1, 2).copy()
    a, b = ort_kernels.mlas_pairs(w, 1)
    flip = rng.random(a.shape) < 1 / 3
    taps = np.stack([np.where(flip, 127, a), np.where(flip, -128, b)], axis=-1).reshape(cout, -1)[:, :per * k * k]
    return taps.reshape(cout, k, k, per).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("cin,group,k", [(33, 1, 1), (5, 1, 3), (16, 1, 3), (12, 3, 3), (24, 24, 3), (16, 16, 5)])
def test_a_passing_convolution_is_exact_on_int8_weights_at_the_extremes(cin, group, k):
    rng = np.random.default_rng(cin * 10 + k)
    cout, per = (cin if group == cin else 12), cin // group
    if group == cin:  # depthwise: any weights, here the extremes
        w = rng.choice(np.array([-128, 127]), (cout, 1, k, k))
    else:
        w = _free_weights(rng, cout, per, k)
    assert ort_kernels.saturation_free(w, group)
    form = ort_kernels.conv_weight_form(w, group)
    assert form == "s8" or not ort_kernels.pairing_confirmed()  # this CPU: the int8 kernel
    for x_zp, x in ((0, np.full((1, cin, 6, 6), 255, np.uint8)), (3, rng.choice(np.array([0, 255], np.uint8), (1, cin, 6, 6))),
                    (200, rng.integers(0, 256, (1, cin, 6, 6)).astype(np.uint8))):
        bias = rng.integers(-1000, 1000, cout)
        acc = ort_kernels._accumulators(x, x_zp, w, group) + bias.reshape(1, -1, 1, 1)
        mult = (np.float32(120) / np.float32(np.abs(acc).max())) * np.linspace(0.5, 1, cout, dtype=np.float32)
        want = np.clip(nm.requantize_float(acc, mult.reshape(1, -1, 1, 1), nm.RoundMode.HALF_EVEN) + 128, 0, 255)
        got = ort_kernels._qlinear_conv(x, x_zp, w, form, mult.astype(np.float32), 128, bias, group)
        assert np.array_equal(got, want), (x_zp, np.argwhere(got != want)[:5])


def test_a_failing_convolution_keeps_the_uint8_form(monkeypatch):
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    w = np.zeros((4, 8, 3, 3), np.int64)
    w[2, 3, 1, 1], w[2, 2, 1, 1] = -127, -2  # one pair of one channel: taps (1, 1) of channels 2 and 3
    assert not ort_kernels.saturation_free(w, 1) and ort_kernels.conv_weight_form(w, 1) == "u8"
    w[2, 2, 1, 1] = 2
    assert ort_kernels.conv_weight_form(w, 1) == ("s8" if ort_kernels.pairing_confirmed() else "u8")
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "s8")  # VNNI: no lanes to fear
    w[2, 2, 1, 1] = -2
    assert ort_kernels.conv_weight_form(w, 1) == "s8"


@pytest.mark.parametrize("confirmed", [True, False])
def test_fused_runs_decide_per_convolution_and_fall_back_when_the_probe_fails(monkeypatch, confirmed):
    # the block's 3x3 convolution has per-channel weights at 127 (it fails the check), its 1x1
    # one stays within the bound and its depthwise one has no lanes: int8 weights exactly where
    # the check passes and the probe confirms the rule, uint8 everywhere else; outputs equal
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: confirmed)
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, 20.0)}, CPU)
    g = next(it for it in plan.items if isinstance(it, fused.FusedRun)).graph()
    weights = {t.name: numpy_helper.to_array(t) for t in g.inits}
    decided = []
    for n in g.nodes:
        if n.op_type == "QLinearConv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            w = weights[n.input[3]].astype(np.int64) - (128 if weights[n.input[3]].dtype == np.uint8 else 0)
            decided.append((ort_kernels.saturation_free(w, group), weights[n.input[3]].dtype))
    assert sorted(free for free, _ in decided) == [False, True, True]
    assert all(dtype == (np.int8 if free and confirmed else np.uint8) for free, dtype in decided), decided


def _fake_qlinear_conv(order: str):
    """A ``QLinearConv`` that adds pairs of products in saturating int16 lanes, the taps in
    ``order`` (``"nhwc"``: the rule's; ``"nchw"``: channel-major), or none (``"exact"``)."""
    def run(x, x_zp, w, form, mult, y_zp, bias, group):
        assert form == "s8"
        cout, per, k = w.shape[0], w.shape[1], w.shape[2]
        h, wd = x.shape[2:]
        xp = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)], constant_values=x_zp)
        acc = np.zeros((1, cout, h, wd), np.int64)
        for c in range(cout):
            g0 = (c // (cout // group)) * per
            cols = np.stack([xp[0, g0 + ci, i:i + h, j:j + wd] for ci in range(per) for i in range(k) for j in range(k)])
            taps = w[c].reshape(-1)  # (channel, row, column)
            if order == "nhwc":
                perm = np.arange(per * k * k).reshape(per, k * k).T.reshape(-1)
                cols, taps = cols[perm], taps[perm]
            prods = cols * taps.reshape(-1, 1, 1)
            if order != "exact" and not (group == cout and per == 1):
                prods = np.concatenate([prods, np.zeros((len(prods) % 2, h, wd), np.int64)])
                prods = np.clip(prods[0::2] + prods[1::2], -32768, 32767)
            acc[0, c] = prods.sum(0) - x_zp * int(taps.sum()) + bias[c]
        return np.clip(nm.requantize_float(acc, mult.reshape(1, -1, 1, 1), nm.RoundMode.HALF_EVEN) + y_zp, 0, 255)
    return run


@pytest.mark.parametrize("order,holds", [("nhwc", True), ("nchw", False), ("exact", False)])
def test_probe_confirms_only_the_lanes_it_models(monkeypatch, order, holds):
    # lanes elsewhere would saturate on weights the rule passes; no lanes at all (VNNI) means the
    # model of the kernel is not this one, so neither is trusted
    monkeypatch.setattr(ort_kernels, "_qlinear_conv", _fake_qlinear_conv(order))
    assert ort_kernels.pairing_confirmed.__wrapped__() == holds


def test_probe_finds_the_rule_on_this_machines_kernels():
    # on x86-64 without VNNI (this project's machines) the probe confirms the lanes; elsewhere
    # weight_form is "s8" and the rule is not needed
    assert ort_kernels.pairing_confirmed.__wrapped__() or ort_kernels.weight_form() != "u8"


def _ort(model, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])  # QDQ fused
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("scale", [2.0, 20.0])
def test_onnxruntime_sessions_keep_the_int8_weights_that_cannot_saturate(monkeypatch, scale):
    # exact_weights, the form of every ONNX Runtime session on a quantized model, decides per
    # convolution as the fused runs do: the 3x3 weights move to uint8, the 1x1 and depthwise ones
    # stay int8 (ONNX Runtime's faster kernel), and the outputs are those of all-uint8 weights
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    model = _uint8_block().model()
    x = _x([1, 8, 12, 12], 7, scale)
    outs = {}
    for confirmed in (False, True):
        monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: confirmed)
        form = ort_kernels.exact_weights(model)
        used = {i for n in form.graph.node for i in n.input}
        types = {t.name: t.data_type for t in form.graph.initializer if t.name in used}
        kept = {n for n in ("w1_quantized", "k_quantized", "w2_quantized") if types.get(n) == TensorProto.INT8}
        assert kept == ({"k_quantized", "w2_quantized"} if confirmed else set()), kept
        outs[confirmed] = _ort(form, x)
    assert np.array_equal(outs[True], outs[False])
