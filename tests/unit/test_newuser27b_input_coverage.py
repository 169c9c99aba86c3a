"""Inputs wider than the calibration samples (newuser_flows27, finding 5): DLinear's held-out series reached
-5.77..5.60 against a calibrated -4.71..4.80, the input's quantize step clipped them, and held-out cosine fell
to 0.973 (cpu-int8) with no warning anywhere: quantize measures on its calibration samples, which cover their own
range.  Now ``Session`` counts the values each run's quantized float inputs lose to that clip
(``input_coverage()``), warns once (``InputSaturationWarning``) at the first clipping run, and ``npuflow run``
prints ``NPF_RUNTIME_INPUT_SATURATED`` with the fraction, the input, the calibrated and the seen range."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.runtime.coverage import InputSaturationWarning


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    """x (1x16, calibrated on uniform -1..1) -> MatMul -> Relu -> y, for cpu-int8 (uint8 asymmetric input)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
                               helper.make_node("Relu", ["m"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = [{"x": rng.uniform(-1, 1, (1, 16)).astype(np.float32)} for _ in range(16)]
    q = npuflow.quantize(model, samples, target="cpu-int8", warn=False)
    path = tmp_path_factory.mktemp("cov") / "m.npuf"
    npuflow.compile(q, "cpu-int8").save(path)
    return str(path)


def test_in_range_inputs_count_nothing_and_do_not_warn(compiled):
    sess = npuflow.Session(compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputSaturationWarning)
        for k in range(3):
            sess.run({"x": np.full((1, 16), 0.5 - 0.25 * k, np.float32)})
    (cov,) = sess.input_coverage()
    assert (cov.name, cov.outside, cov.total, cov.runs) == ("x", 0, 48, 3)
    assert cov.low < -0.9 and cov.high > 0.9 and cov.warning() is None


def test_clipped_inputs_are_counted_and_warned_once(compiled):
    sess = npuflow.Session(compiled)
    x = np.zeros((1, 16), np.float32)
    x[0, :4] = [3.0, -3.0, 2.5, -2.5]  # 4 of 16 values far outside -1..1
    with pytest.warns(InputSaturationWarning, match=r"NPF_RUNTIME_INPUT_SATURATED.*'x': 25\.00 %"):
        sess.run({"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputSaturationWarning)  # once per session and input
        sess.run({"x": x})
        sess.run({"x": np.zeros((1, 16), np.float32)})
    (cov,) = sess.input_coverage()
    assert (cov.outside, cov.total, cov.runs) == (8, 48, 3)
    assert (cov.seen_min, cov.seen_max) == (-3.0, 3.0)
    w = cov.warning()
    assert w.code == "NPF_RUNTIME_INPUT_SATURATED"
    assert "16.67 %" in w.message and "-3..3" in w.message and "calibration" in w.hint


def test_npuflow_run_prints_the_saturation_over_a_folder(compiled, tmp_path, capsys):
    from npuflow.cli.app import main

    folder = tmp_path / "samples"
    folder.mkdir()
    for i, scale in enumerate((0.5, 4.0)):
        np.save(folder / f"s{i}.npy", np.full((1, 16), scale, np.float32))
    assert main(["run", compiled, "-i", str(folder), "-o", str(tmp_path / "out")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "WARNING [NPF_RUNTIME_INPUT_SATURATED] input 'x': 50.00 % of its values (16 of 32, over 2 run(s))" in err
    assert "the values seen span 0.5..4" in err


def test_after_its_first_runs_the_check_samples_one_run_in_sixteen():
    """The check's cost stays off a long-running session's hot path: every one of the first
    ``EVERY_RUN`` runs is checked, then one in ``SAMPLE_EVERY``, and a clipped value is still counted."""
    from npuflow.runtime.coverage import EVERY_RUN, SAMPLE_EVERY, CoverageCounter

    counter = CoverageCounter([{"name": "x", "dtype": "float32",
                                "quant": {"scale": 1 / 128, "zero_point": 0, "dtype": "int8"}}])
    inside, outside = {"x": np.zeros(4, np.float32)}, {"x": np.full(4, 5.0, np.float32)}
    for _ in range(EVERY_RUN):
        counter.observe(inside)
    for _ in range(4 * SAMPLE_EVERY):
        counter.observe(outside)
    (cov,) = counter.report()
    assert cov.runs == EVERY_RUN + 4 and cov.outside == 4 * 4 and cov.total == 4 * (EVERY_RUN + 4)
