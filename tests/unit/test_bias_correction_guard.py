"""Bias correction as the quantizer applies it: the exact mean-patch shift, the ``auto`` guard,
and the copy of corrected biases into the static twin."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.quant.algorithms import apply as apply_mod
from npuflow.quant.algorithms.capture import run_outputs
from npuflow.quant.algorithms.patches import PatchSampler

from .quant_nets import conv_net, run, samples


@pytest.mark.parametrize("pads,strides,group,k", [([1, 1, 1, 1], [1, 1], 1, 3), ([0, 1, 2, 0], [2, 2], 1, 3),
                                                  ([1, 1, 1, 1], [2, 1], 4, 3), ([0, 0, 0, 0], [1, 1], 2, 1)])
def test_mean_patch_gives_the_exact_mean_output_shift_with_padding_and_stride(pads, strides, group, k):
    rng = np.random.default_rng(0)
    cin, cout = 4, 8
    dw = rng.normal(size=(cout, cin // group, k, k)).astype(np.float32)
    x = (rng.normal(size=(2, cin, 7, 9)) + 1.5).astype(np.float32)  # non-zero mean: padding matters
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=pads, strides=strides, group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, list(x.shape))],
                              [helper.make_tensor_value_info("y", 1, None)], [numpy_helper.from_array(dw, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    expected = run(model, {"x": x})[0].astype(np.float64).mean(axis=(0, 2, 3))
    patch = PatchSampler(node, dw.shape, per_batch=1).mean_patch(x)
    shift = np.einsum("gok,gk->go", dw.reshape(group, cout // group, -1).astype(np.float64), patch).reshape(-1)
    np.testing.assert_allclose(shift, expected, rtol=1e-5, atol=1e-5)
    if any(pads):  # the per-channel input mean (the old estimate) misses the zero-padded border taps
        naive = dw.reshape(cout, cin // group, -1).sum(-1).astype(np.float64)
        assert not np.allclose(naive.sum(-1) * x.mean(), expected, atol=1e-3)


def test_auto_bias_correction_is_dropped_when_it_raises_the_output_error(monkeypatch):
    net, data = conv_net(), samples([1, 3, 8, 8], n=8)

    def harmful(float_model, qmodel, calibration, round_mode, on_outputs=None):
        for outputs in run_outputs(qmodel, list(calibration)):
            on_outputs(outputs)
        out = onnx.ModelProto()
        out.CopyFrom(qmodel)
        names = []
        for t in out.graph.initializer:
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.int32 and t.name.endswith("_quantized"):  # int32 biases: push them far off
                t.CopyFrom(numpy_helper.from_array((arr + 5000).astype(np.int32), t.name))
                names.append(t.name)
        return out, names

    monkeypatch.setattr(apply_mod, "correct_empirical", harmful)
    auto = npuflow.quantize(net, data, target="cpu-int8")
    assert auto.config.include_bias_corr == "auto" and auto.info["bias_corrected"] is False
    forced = npuflow.quantize(net, data, target="cpu-int8", config={"include_bias_corr": True})
    assert forced.info["bias_corrected"] is True
    x = {"x": data[0]}
    ref = run(auto.float_model, x)[0]
    assert np.abs(run(forced.model, x)[0] - ref).mean() > 10 * np.abs(run(auto.model, x)[0] - ref).mean()


def test_auto_bias_correction_is_kept_when_it_lowers_the_output_error():
    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=8), target="DPUCZDX8G_ISA1_B4096")
    kept = q.info["bias_corrected"]
    off = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=8), target="DPUCZDX8G_ISA1_B4096",
                           config={"include_bias_corr": False})
    feeds = [{"x": s} for s in samples([1, 3, 8, 8], n=8)]
    reference = [run(q.float_model, f) for f in feeds]
    err_on = apply_mod.relative_error(run_outputs(q.model, feeds), reference)
    err_off = apply_mod.relative_error(run_outputs(off.model, feeds), reference)
    assert kept is (err_on < err_off) and err_on <= err_off
    record = q.info["algorithms"]["bias_correction"]
    assert record["kept"] is kept and record["layers"] >= 1
    assert (record["output_error_after"] < record["output_error_before"]) is kept


def test_auto_check_reuses_the_float_outputs_of_calibration(monkeypatch):
    """The float reference comes from the calibration pass: only the corrected model runs again,
    and the recorded errors are those of a separate float run."""
    net, data = conv_net(), samples([1, 3, 8, 8], n=8)
    runs = []
    real = apply_mod.run_outputs

    def counting(model, feeds):
        runs.append(model)
        return real(model, feeds)

    monkeypatch.setattr(apply_mod, "run_outputs", counting)
    q = npuflow.quantize(net, data, target="DPUCZDX8G_ISA1_B4096")
    record = q.info["algorithms"]["bias_correction"]
    assert len(runs) == 1 and record["checked_on"] == 8
    feeds = [{"x": s} for s in data]
    reference = [run(q.float_model, f) for f in feeds]
    uncorrected = npuflow.quantize(net, data, target="DPUCZDX8G_ISA1_B4096", config={"include_bias_corr": False})
    np.testing.assert_allclose(record["output_error_before"],
                               apply_mod.relative_error(real(uncorrected.model, feeds), reference), rtol=1e-4)
