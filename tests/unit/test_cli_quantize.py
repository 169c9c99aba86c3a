"""``npuflow quantize`` through the CLI: success, and every bad input as a coded error (no traceback)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from npuflow.cli.app import main

from .quant_nets import conv_net, samples

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("qnet")
    onnx.save(conv_net(), str(d / "net.onnx"))
    calib = d / "calib"
    calib.mkdir()
    for i, x in enumerate(samples([1, 3, 8, 8], n=4)):
        np.save(calib / f"{i:03d}.npy", x)
    return d


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def npuflow_cli(capsys):
    """The CLI entry point in-process (same argument parsing and error handling, no interpreter start-up)."""
    def call(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return _Result(rc, out, err)
    return call


def _fails_with(proc, code):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"ERROR [{code}]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_quantize_cli_writes_artifacts_and_prints_table(cli, net, tmp_path):
    out = tmp_path / "out"
    proc = cli("quantize", net / "net.onnx", "--target", DPU, "--calib", net / "calib", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "Cosine Similarity" in proc.stdout and "conv1" in proc.stdout and "output y" in proc.stdout
    assert (out / "quantized_model.onnx").is_file()
    assert json.loads((out / "quant_info.json").read_text())["target"] == DPU


def test_raw_tofile_calibration_with_shapes_from_config(npuflow_cli, net, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, x in enumerate(samples([1, 3, 8, 8], n=3)):
        x.tofile(raw / f"{i}.bin")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("calib_shapes:\n  x: [1, 3, 8, 8]\n")
    proc = npuflow_cli("quantize", net / "net.onnx", "--target", "cpu-int8", "--calib", raw, "--config", cfg,
               "-o", tmp_path / "o", "--no-nodes")
    assert proc.returncode == 0, proc.stderr
    proc = npuflow_cli("quantize", net / "net.onnx", "--target", "cpu-int8", "--calib", raw, "-o", tmp_path / "o2")
    _fails_with(proc, "NPF_QUANT_CALIB_SOURCE")


def test_empty_calibration_folder(npuflow_cli, net, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = npuflow_cli("quantize", net / "net.onnx", "--target", DPU, "--calib", empty, "-o", tmp_path / "o")
    _fails_with(proc, "NPF_QUANT_CALIB_EMPTY")
    assert not (tmp_path / "o" / "quantized_model.onnx").exists()


def test_nan_in_calibration_data(npuflow_cli, net, tmp_path):
    bad = tmp_path / "nan"
    bad.mkdir()
    x = samples([1, 3, 8, 8], n=1)[0]
    x[0, 0, 0, 0] = np.nan
    np.save(bad / "0.npy", x)
    _fails_with(npuflow_cli("quantize", net / "net.onnx", "--target", DPU, "--calib", bad, "-o", tmp_path / "o"),
                "NPF_QUANT_CALIB_NONFINITE")


@pytest.mark.parametrize("array", [np.zeros((1, 3, 9, 8), np.float32), np.zeros((1, 3, 8, 8), np.int32)])
def test_calibration_shape_or_dtype_mismatch(npuflow_cli, net, tmp_path, array):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "0.npy", array)
    _fails_with(npuflow_cli("quantize", net / "net.onnx", "--target", DPU, "--calib", bad, "-o", tmp_path / "o"),
                "NPF_QUANT_CALIB_MISMATCH")


@pytest.mark.parametrize("text, code", [
    ('{"layers": [{"name": "no_such_conv", "activation": {"bit_width": 8}}]}', "NPF_QUANT_UNKNOWN_LAYER"),
    ('{"keep_float": ["nope"]}', "NPF_QUANT_UNKNOWN_LAYER"),
    ('{"activation": {"bit_width": 12}}', "NPF_QUANT_BAD_CONFIG"),
    ('{"activation": {"scale_type": "power_of_two", "symmetric": false}}', "NPF_QUANT_CONFIG_CONFLICT"),
    ('{"weight": {"bit_width": 16}}', "NPF_QUANT_BITS_UNSUPPORTED"),
    ('{not json', "NPF_QUANT_CONFIG_FILE"),
])
def test_bad_config(npuflow_cli, net, tmp_path, text, code):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(text)
    proc = npuflow_cli("quantize", net / "net.onnx", "--target", DPU, "--calib", net / "calib", "--config", cfg,
               "-o", tmp_path / "o")
    _fails_with(proc, code)


def test_input_shape_and_plain_qdq_options(npuflow_cli, net, tmp_path):
    out = tmp_path / "plain"
    proc = npuflow_cli("quantize", net / "net.onnx", "--target", DPU, "--calib", net / "calib", "--input-shape",
                       "x=1x3x8x8", "--plain-qdq", "--no-nodes", "-o", out)
    assert proc.returncode == 0, proc.stderr
    m = onnx.load(str(out / "quantized_model.onnx"))
    assert not m.functions and any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    _fails_with(npuflow_cli("quantize", net / "net.onnx", "--target", DPU, "--calib", net / "calib",
                            "--input-shape", "y=1x3x8x8", "-o", out), "NPF_MODEL_UNKNOWN_INPUT")


def test_accuracy_target_runs_the_ladder_until_met(npuflow_cli, net, tmp_path):
    """--min-similarity: the defaults already reach a modest target, so no further step runs;
    the steps are printed and recorded in quant_info.json."""
    out = tmp_path / "out"
    r = npuflow_cli("quantize", net / "net.onnx", "-t", DPU, "--calib", net / "calib", "-o", out, "-v", "0",
                    "--min-similarity", "0.5")
    assert r.returncode == 0, r.stderr
    assert "Accuracy target: output cosine >= 0.5 (met" in r.stdout and "target met" in r.stdout
    auto = json.loads((out / "quant_info.json").read_text())["auto"]
    assert auto["met"] and auto["target"] == 0.5 and auto["steps"][0]["kept"]
    assert [s["score"] for s in auto["steps"][1:]] == [None] * (len(auto["steps"]) - 1)


def test_accuracy_target_out_of_reach_warns_and_keeps_the_best(npuflow_cli, net, tmp_path):
    out = tmp_path / "out"
    r = npuflow_cli("quantize", net / "net.onnx", "-t", DPU, "--calib", net / "calib", "-o", out, "-v", "0",
                    "--min-similarity", "1", "--time-budget", "1")
    assert r.returncode == 0, r.stderr
    assert "WARNING the accuracy target 1 was not reached" in r.stderr and "--allow-cpu-fallback" in r.stderr
    auto = json.loads((out / "quant_info.json").read_text())["auto"]
    assert not auto["met"] and auto["target"] == 1.0
    # each step ran, or was not started because the budget was spent (how many depends on the machine's speed;
    # the budget rule itself is tested in test_auto_quant.py)
    assert all(s["score"] is not None or "time budget spent" in s["note"] for s in auto["steps"])
    assert (out / "quantized_model.onnx").is_file()


@pytest.mark.parametrize("extra", [["--time-budget", "60"], ["--allow-cpu-fallback"], ["--qat-minutes", "5"]])
def test_ladder_options_need_an_accuracy_target(npuflow_cli, net, tmp_path, extra):
    r = npuflow_cli("quantize", net / "net.onnx", "-t", DPU, "--calib", net / "calib", "-o", tmp_path / "o", *extra)
    assert r.returncode == 2 and "needs --min-similarity" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
