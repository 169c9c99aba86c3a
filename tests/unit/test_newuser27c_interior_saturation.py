"""Clipping inside the model (newuser_flows27b, "What it does not see"): DLinear on DPUCZDX8G lost held-out
accuracy (cosine 0.943, quantize said 0.99996) where its held-out series fit the input's range but pushed the
moving average past its quantize step's (``/Transpose_1_output_0_q``); no warning anywhere.  ``npuflow compare``
computes every float tensor of its samples anyway: it now counts, per quantize step, the values past the step's
range (``CompareResult.saturation``, compare.json's ``saturation``) and warns ``NPF_COMPARE_SATURATED`` with the
worst steps, their fraction clipped, calibrated and seen ranges."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.analyze.compare import compare


def _mean_model():
    """x (1x16) -> mean of its 16 values (MatMul by 1/16) -> + x -> y: a moving average and its residual."""
    w = numpy_helper.from_array(np.full((16, 16), 1 / 16, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["avg"], name="avg"),
                               helper.make_node("Add", ["avg", "x"], ["y"], name="res")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Calibrated on independent +-1 values (their mean stays near 0); compared on rows of one sign
    (inside the input's range, but their mean reaches +-1: far past the mean's calibrated range)."""
    rng = np.random.default_rng(0)
    model = _mean_model()
    calib = [{"x": rng.choice([-1.0, 1.0], (1, 16)).astype(np.float32)} for _ in range(16)]
    d = tmp_path_factory.mktemp("sat27c")
    q = npuflow.quantize(model, calib, target="cpu-int8", warn=False)
    npuflow.compile(q, "cpu-int8").save(d / "m.npuf")
    q.save(d / "q")
    (d / "calib").mkdir()
    (d / "held").mkdir()
    for i, s in enumerate(calib[:4]):
        np.save(d / "calib" / f"s{i}.npy", s["x"])
    for i, sign in enumerate((1.0, -1.0, 1.0, -1.0)):
        x = np.full((1, 16), sign * 0.9, np.float32)
        np.save(d / "held" / f"s{i}.npy", x)
    return model, d


@pytest.mark.parametrize("quantized", ["m.npuf", "q/quantized_model.onnx"])
def test_an_interior_step_clipping_the_samples_is_counted_and_warned(built, quantized):
    model, d = built
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compare(model, str(d / quantized), str(d / "held"))
    top = result.saturation_warning()
    assert top is not None and top.code == "NPF_COMPARE_SATURATED"
    worst = max(result.saturation, key=lambda s: s.fraction)
    assert worst.tensor == "avg" and worst.fraction == 1.0 and worst.high < 0.5 < worst.seen_max
    assert "'avg" in top.message and "100.00 %" in top.message and "calibrat" in top.hint
    assert json.loads(json.dumps(result.to_json()))["saturation"][0]["tensor"] == "avg"


def test_the_calibration_samples_do_not_warn(built):
    model, d = built
    result = compare(model, str(d / "m.npuf"), str(d / "calib"))
    assert result.saturation_warning() is None


def test_npuflow_compare_prints_the_warning(built, tmp_path, capsys):
    from npuflow.cli.app import main

    _, d = built
    onnx_path = tmp_path / "f.onnx"
    import onnx
    onnx.save(_mean_model(), onnx_path)
    assert main(["compare", str(onnx_path), str(d / "m.npuf"), "--data", str(d / "held"), "-o", str(tmp_path / "c")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "WARNING [NPF_COMPARE_SATURATED] 1 quantize step(s) clip over 0.5 % of the values these 4 sample(s)" in err
