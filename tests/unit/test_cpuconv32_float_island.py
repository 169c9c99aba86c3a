"""A float convolution between quantized layers (a CPU island: a stride-1 9x9 conv on bernoulli2, whose
kernels stop at 7x7; a ``keep_float`` conv on cpu-int8) computes what the quantized model says.

ONNX Runtime's ``WeightBiasQuantization`` (basic level and above) quantizes the float weights of a
Conv that reads a dequantize step and feeds a quantize step to per-tensor int8, and its bias to int32:
the runtime's CPU subgraph ran so, 1 LSB from the model as written at the conv's quantize step on
~9 % of codes, 2 LSB at the output (0.12 on bernoulli2).  ``ort_session.disabled`` leaves it out."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import npuflow
from npuflow import ort_export, ort_kernels
from npuflow.ort_session import DISABLE_KEY, WEIGHT_QUANTIZER, disabled
from tests.unit.test_dpuops32_wide_conv import _wide


def _plain_ort(model: onnx.ModelProto, feeds: dict, names: list[str]) -> dict:
    """The model as written: ONNX Runtime with every graph optimisation off."""
    m = onnx.ModelProto()
    m.CopyFrom(ort_kernels.exact_weights(model))
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n != "y")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds)))


def _island(target: str, keep_float: bool):
    model = _wide(9, 9, 1, [4, 4, 4, 4], (12, 12))
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 2, 12, 12)).astype(np.float32)} for _ in range(6)]
    q = npuflow.quantize(model, calib, target, config={"keep_float": ["wide"]} if keep_float else None, warn=False)
    return q.model, calib


@pytest.mark.parametrize("target, keep_float", [("bernoulli2", False), ("cpu-int8", True)])
def test_a_float_conv_between_quantized_layers_runs_as_the_model_says(target, keep_float, tmp_path):
    qmodel, calib = _island(target, keep_float)
    compiled = npuflow.compile(qmodel, target)
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [True, False, True]
    session = npuflow.Session(npuflow.CompiledModel.load(compiled.save(tmp_path / "m.npuf")))
    for feeds in calib[:3]:
        got = session.run(feeds, ["r_q", "y"])
        want = _plain_ort(qmodel, feeds, ["r_q", "y"])
        np.testing.assert_array_equal(got["r_q"], want["r_q"])  # the float conv's quantize step
        np.testing.assert_array_equal(got["y"], want["y"])


def test_only_models_with_a_float_weight_read_after_a_dequantize_step_leave_the_quantizer_out():
    qmodel, _ = _island("bernoulli2", False)
    assert disabled(qmodel) == [WEIGHT_QUANTIZER]
    assert disabled(qmodel, ["ConvMulFusion"]) == ["ConvMulFusion", WEIGHT_QUANTIZER]
    all_quantized, _ = _island("cpu-int8", False)  # every weight behind a dequantize step
    assert disabled(all_quantized) == []
    # the float model: no dequantize step before the conv
    assert disabled(_wide(9, 9, 1, [4, 4, 4, 4], (12, 12))) == []


def test_an_exported_model_runs_its_float_island_in_plain_onnx_runtime_as_the_session(tmp_path):
    qmodel, calib = _island("bernoulli2", False)
    compiled = npuflow.compile(qmodel, "bernoulli2")
    path = compiled.save(tmp_path / "m.npuf")
    ort_export.export(path, tmp_path / "m_ort.onnx")
    so = ort.SessionOptions()
    so.add_session_config_entry(DISABLE_KEY, "ConvMulFusion")  # the application's own stays
    so = ort_export.session_options(tmp_path / "m_ort.onnx", so)
    assert so.get_session_config_entry(DISABLE_KEY) == f"ConvMulFusion;{WEIGHT_QUANTIZER}"
    sess = ort.InferenceSession(str(tmp_path / "m_ort.onnx"), so, providers=["CPUExecutionProvider"])
    session = npuflow.Session(npuflow.CompiledModel.load(path))
    for feeds in calib[:2]:
        np.testing.assert_array_equal(sess.run(["y"], feeds)[0], session.run(feeds)["y"])


@pytest.mark.parametrize("kernel, noted", [(9, True), (7, False)])
def test_quantize_names_the_float_layers_plain_onnx_runtime_would_quantize(tmp_path, capsys, kernel, noted):
    from npuflow.cli.app import main

    onnx.save(_wide(kernel, kernel, 1, [kernel // 2] * 4, (12, 12)), tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        np.save(tmp_path / "calib" / f"{i}.npy", rng.standard_normal((1, 2, 12, 12)).astype(np.float32))
    rc = main(["quantize", str(tmp_path / "m.onnx"), "-t", "bernoulli2", "--calib", str(tmp_path / "calib"),
               "-o", str(tmp_path / "out"), "--no-nodes"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert ("keeps 1 float Conv/Gemm layer(s)" in err and "'wide'" in err and WEIGHT_QUANTIZER in err) is noted, err
