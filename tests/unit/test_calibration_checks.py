"""Quantize never fails silently (issue 16), on small synthetic models.

* calibration samples must have the shape the model is quantized at and, from files, the
  input's dtype (coded error naming the file);
* an output similarity below ``min_output_cosine`` warns (visible in piped output), and
  ``--strict`` / ``npuflow build`` make it ``NPF_QUANT_LOW_SIMILARITY`` without writing files;
* the calibration-output error that picks the percentile and keeps bias correction is pooled
  over the samples, so an all-zero sample cannot decide it;
* ``analyze sensitivity`` survives a ConvTranspose and bounds its work.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

import npuflow
from npuflow.analyze.sensitivity import analyze
from npuflow.cli.app import main
from npuflow.errors import NpuflowError
from npuflow.quant.algorithms.apply import relative_error

from .quant_nets import _init, model_from, samples, two_conv_net
from .test_build_config import BASE, _conv_model

DPU = "DPUCZDX8G_ISA1_B4096"
#: clips every activation at its 1st percentile: a deliberately collapsed model (output cosine 0.67)
COLLAPSE = {"activation": {"method": "percentile", "percentile": 1.0}}


def _dynamic_net() -> onnx.ModelProto:
    """two_conv_net with dynamic height/width, as PP-OCRv4 det is exported."""
    m = two_conv_net()
    for k in (2, 3):
        m.graph.input[0].type.tensor_type.shape.dim[k].dim_param = f"d{k}"
    m.graph.output[0].type.tensor_type.ClearField("shape")
    return m


def _folder(tmp_path, arrays) -> str:
    d = tmp_path / "calib"
    d.mkdir()
    for i, a in enumerate(arrays):
        np.save(d / f"{i:03d}.npy", a)
    return str(d)


def test_samples_of_another_size_than_the_frozen_shape_are_refused(tmp_path):
    calib = _folder(tmp_path, samples((1, 3, 6, 6), 2) + samples((1, 3, 12, 12), 1))
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(_dynamic_net(), calib, "cpu-int8", input_shapes={"x": [1, 3, 6, 6]})
    assert exc.value.code == "NPF_QUANT_CALIB_MISMATCH"
    assert "002.npy" in exc.value.message and "1x3x12x12" in exc.value.message and "1x3x6x6" in exc.value.message


def test_dynamic_dims_vary_only_when_the_config_says_so(tmp_path):
    calib = _folder(tmp_path, samples((1, 3, 6, 6), 2) + samples((1, 3, 10, 10), 2))
    q = npuflow.quantize(_dynamic_net(), calib, "cpu-int8", input_shapes={"x": [1, 3, 6, 6]},
                         config={"calib_dynamic_dims": True})
    assert q.problem is None


def test_a_float64_file_for_a_float32_input_is_refused(tmp_path):
    calib = _folder(tmp_path, [samples((1, 3, 6, 6), 1)[0], samples((1, 3, 6, 6), 1)[0].astype(np.float64)])
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(two_conv_net(), calib, "cpu-int8")
    assert exc.value.code == "NPF_QUANT_CALIB_MISMATCH"
    assert "001.npy" in exc.value.message and "float64" in exc.value.message


def test_low_output_similarity_warns_and_strict_raises(caplog):
    data = samples((1, 3, 6, 6), 8)
    with caplog.at_level(logging.WARNING, logger="npuflow"):
        q = npuflow.quantize(two_conv_net(), data, DPU, config=COLLAPSE)
    assert q.report.calibration_outputs["y"] < 0.95 and q.report.similarity_samples == 8
    assert "NPF_QUANT_LOW_SIMILARITY" in caplog.text and "largest drops at relu1 (Relu" in caplog.text
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(two_conv_net(), data, DPU, config=COLLAPSE, strict=True)
    assert exc.value.code == "NPF_QUANT_LOW_SIMILARITY" and "min_output_cosine 0.95" in exc.value.message
    relaxed = npuflow.quantize(two_conv_net(), data, DPU, config={**COLLAPSE, "min_output_cosine": 0.5}, strict=True)
    assert relaxed.problem is None
    good = npuflow.quantize(two_conv_net(), data, DPU, strict=True)
    assert good.report.calibration_outputs["y"] > 0.99


def test_cli_warning_is_visible_piped_and_strict_writes_nothing(cli, tmp_path):
    onnx.save(two_conv_net(), str(tmp_path / "m.onnx"))
    calib = _folder(tmp_path, samples((1, 3, 6, 6), 4))
    (tmp_path / "c.json").write_text(json.dumps(COLLAPSE))
    args = ["quantize", tmp_path / "m.onnx", "--target", DPU, "--calib", calib, "-c", tmp_path / "c.json", "--no-nodes"]
    proc = cli(*args, "-o", tmp_path / "warned")  # a subprocess: stdout/stderr are pipes, not a terminal
    assert proc.returncode == 0, proc.stderr
    assert "WARNING [NPF_QUANT_LOW_SIMILARITY]" in proc.stderr and "hint:" in proc.stderr
    assert (tmp_path / "warned" / "quantized_model.onnx").is_file()
    proc = cli(*args, "-o", tmp_path / "strict", "--strict")
    assert proc.returncode == 2 and "ERROR [NPF_QUANT_LOW_SIMILARITY]" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "strict").exists()


def test_build_refuses_to_publish_a_collapsed_model_unless_relaxed(tmp_path, capsys):
    _conv_model(tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8).tofile(tmp_path / "calib" / f"{i}.bgr")
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["npuflow"] = COLLAPSE
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml")]) == 2
    assert "ERROR [NPF_QUANT_LOW_SIMILARITY]" in capsys.readouterr().err
    assert not list(tmp_path.glob("out/tiny*"))
    conf["npuflow"] = {**COLLAPSE, "min_output_cosine": 0.0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml")]) == 0
    assert (tmp_path / "out" / "tiny.npuf").is_file()


def test_output_error_is_pooled_so_an_all_zero_sample_does_not_decide():
    """Sample 2's float output is ~1e-10 (a det map without text): per sample its error ratio
    would be ~1e10 for either candidate and decide the comparison on rounding noise."""
    ref = [[np.array([1.0, 2.0])], [np.array([1e-10, 0.0])]]
    better = [[np.array([1.0, 2.1])], [np.array([0.0, 0.0])]]
    worse = [[np.array([1.5, 2.5])], [np.array([2e-10, 0.0])]]
    assert relative_error(better, ref) < relative_error(worse, ref)
    assert relative_error(better, ref) == pytest.approx(0.01 / 5.0)


def _deconv_net() -> onnx.ModelProto:
    """x -> ConvTranspose(2x2, stride 2) -> Conv 1x1, as in the head of PP-OCRv4 det (whose
    float variant once gave the ConvTranspose's weight and bias one initializer name)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["u"], name="deconv", strides=[2, 2]),
             helper.make_node("Conv", ["u", "w", "b"], ["y"], name="conv")]
    inits = [_init("wt", rng.normal(0, 0.5, (3, 4, 2, 2))), _init("bt", rng.normal(0, 0.1, 4)),
             _init("w", rng.normal(0, 0.5, (2, 4, 1, 1))), _init("b", rng.normal(0, 0.1, 2))]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])])


def test_sensitivity_handles_conv_transpose_and_a_time_budget():
    data = samples((1, 3, 4, 4), 4)
    q = npuflow.quantize(_deconv_net(), data, "cpu-int8", config={"min_output_cosine": 0})
    feeds = [{"x": x} for x in data]
    full = analyze(q, feeds, order=["conv"])
    assert "deconv" in full.ranking() and not full.skipped
    bounded = analyze(q, feeds, order=["conv"], time_budget=0.0)
    assert bounded.layers == [] and bounded.skipped[0] == "conv" and set(bounded.skipped) == set(full.ranking())


def test_sensitivity_cli_shows_progress_when_piped(cli, tmp_path):
    onnx.save(_deconv_net(), str(tmp_path / "m.onnx"))
    calib = _folder(tmp_path, samples((1, 3, 4, 4), 2))
    proc = cli("analyze", "sensitivity", tmp_path / "m.onnx", "--target", "cpu-int8", "--calib", calib,
               "--samples", "2", "--json", tmp_path / "s.json")
    assert proc.returncode == 0, proc.stderr
    assert "analyze: quantize calibrate 2/2 samples" in proc.stderr  # a line per stage, one per layer:
    assert re.search(r"^analyze: sensitivity 1/2 layers \d+\.\d s deconv$", proc.stderr, re.M), proc.stderr
    assert json.loads((tmp_path / "s.json").read_text())["skipped"] == []
