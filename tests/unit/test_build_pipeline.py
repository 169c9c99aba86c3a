"""A whole ``npuflow build`` on a tiny model fed nv12: artefacts, report, log, runtime format."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from skimage import data as skdata

from npuflow.cli.app import main
from tests.unit.test_build_config import BASE, _conv_model, photo_crops


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the tiny model from 8x8 crops of a real photo (BGR NCHW uint8 raw files)."""
    root = tmp_path_factory.mktemp("tiny_build")
    _conv_model(root / "m.onnx")
    photo_crops(root / "calib", 12)
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["model_parameters"]["log_level"] = "debug"
    (root / "c.yaml").write_text(yaml.safe_dump(conf))
    return root


def test_build_writes_every_artifact_and_succeeds(built, capsys):
    assert main(["build", str(built / "c.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "Cosine Similarity" in out and "data_pre_colour" in out
    assert out.rstrip().splitlines()[-1].startswith("Build succeeded")
    # piped: one line per stage with its time, the quantizer's calibration counted (issue 20 item 3)
    stages = [line.split()[1] for line in err.splitlines() if line.startswith("build: ")]
    assert stages[:2] == ["parse", "check"] and stages[-2:] == ["compile", "save"], err
    assert re.search(r"^build: quantize calibrate 12/12 samples \d+\.\d s$", err, re.M), err
    # the summary (issue 20 item 5): output similarity, placement counts, the estimate
    assert re.search(r"^output \S+: cosine similarity to the float model 0\.\d{6}", out, re.M), out
    assert re.search(r"^placement: \d+ of \d+ nodes on DPU in \d+ subgraph\(s\), \d+ on CPU", out, re.M), out
    assert re.search(r"^estimate \(npuflow perf\): DPU \d+\.\d{3} ms", out, re.M), out
    names = sorted(p.name for p in (built / "out").iterdir())
    assert names == sorted([
        "npuflow_build.log", "tiny.npuf", "tiny_build_report.json", "tiny_optimized_float_model.onnx",
        "tiny_original_float_model.onnx", "tiny_quant_info.json", "tiny_quantized_model.onnx",
    ])
    report = json.loads((built / "out" / "tiny_build_report.json").read_text())
    assert report["inputs"][0]["runtime_shape"] == [1, 12, 8] and report["inputs"][0]["intermediate_type"] == "yuv444_128"
    assert {"parse", "check", "quantize", "compile"} <= set(report["timings_s"])
    rows = {r["node"]: r for r in report["similarity"]["nodes"]}
    assert rows["conv"]["on"] == "DPU" and rows["conv"]["cosine"] > 0.99
    assert report["check"]["summary"]["npu_subgraphs"] >= 1
    log = (built / "out" / "npuflow_build.log").read_text()
    assert "DEBUG" in log and "Convert to runtime file" in log and "Cosine Similarity" in log


def test_o_is_the_output_folder(built, tmp_path, capsys):
    assert main(["build", str(built / "c.yaml"), "-o", str(tmp_path / "elsewhere"), "-v", "0"]) == 0
    capsys.readouterr()
    assert (tmp_path / "elsewhere" / "tiny.npuf").is_file()


def test_original_model_takes_nv12_and_matches_manual_preprocessing(built):
    """original_float_model.onnx takes the uint8 nv12 buffer; its result equals the float model
    run on the colour-converted, normalised picture."""
    out = built / "out"
    assert (out / "tiny.npuf").exists() or main(["build", str(built / "c.yaml")]) == 0
    sess = ort.InferenceSession(str(out / "tiny_original_float_model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape == [1, 12, 8]
    y = np.full((8, 8), 120, np.uint8)
    uv = np.tile(np.array([100, 160], np.uint8), (4, 4))  # U=100, V=160 everywhere
    nv12 = np.concatenate([y, uv])[None]
    got = sess.run(None, {"data": nv12})[0]
    r, g, b = 120 + 1.402 * 32, 120 - 0.344136 * -28 - 0.714136 * 32, 120 + 1.772 * -28
    bgr = np.array([b, g, r], np.float32).reshape(1, 3, 1, 1) * np.ones((1, 3, 8, 8), np.float32)
    x = (bgr - np.array([103.94, 116.78, 123.68], np.float32).reshape(1, 3, 1, 1)) * np.float32(0.017)
    ref = ort.InferenceSession(str(built / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_compiled_model_takes_the_nv12_buffer_and_matches_the_quantized_model(built):
    """The .npuf accepts the device's uint8 nv12 buffer directly and computes what
    quantized_model.onnx computes on it."""
    from npuflow.runtime import Session

    out = built / "out"
    assert (out / "tiny.npuf").exists() or main(["build", str(built / "c.yaml")]) == 0
    session = Session(out / "tiny.npuf")
    (inp,) = session.get_inputs()
    assert inp.shape == (1, 12, 8) and inp.dtype == "uint8"
    photo = skdata.astronaut()[200:208, 200:208]
    nv12 = np.concatenate([photo[..., 1], photo[::2, ::2, :2].reshape(4, 8)])[None].astype(np.uint8)
    got = session.run({"data": nv12})["y"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    q = ort.InferenceSession(str(out / "tiny_quantized_model.onnx"), opts, providers=["CPUExecutionProvider"])
    expected = q.run(None, {"data": nv12})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_recorded_only_keys_asking_for_something_are_warned(built, tmp_path, capsys):
    """core_num 2, layer_out_dump True, optimize_level O1 change nothing in npuflow (they are only
    recorded); the build accepted them without a word, now each is a warning in the log."""
    conf = yaml.safe_load((built / "c.yaml").read_text())
    conf["model_parameters"].update(layer_out_dump=True, working_dir=str(tmp_path / "out"))
    conf["model_parameters"]["onnx_model"] = str(built / "m.onnx")
    conf["calibration_parameters"]["cal_data_dir"] = str(built / "calib")
    conf["compiler_parameters"].update(core_num=2, optimize_level="O1")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0
    capsys.readouterr()
    log = (tmp_path / "out" / "npuflow_build.log").read_text()
    for key in ("model_parameters.layer_out_dump: True", "compiler_parameters.core_num: 2",
                "compiler_parameters.optimize_level: O1"):
        assert re.search(rf"WARNING.*{re.escape(key)} is recorded in the .npuf build config and changes nothing", log), key
    assert "compiler_parameters.compile_mode:" not in log  # left at its default


def test_an_accuracy_target_runs_the_ladder_and_reports_its_steps(built, tmp_path, capsys):
    """``min_similarity`` makes the build run the accuracy steps until the target holds; an
    unreachable target with a zero budget stops after the defaults, warns, and still builds."""
    conf = yaml.safe_load((built / "c.yaml").read_text())
    conf["calibration_parameters"].update(min_similarity=0.999999, time_budget=0.001)
    conf["model_parameters"]["working_dir"] = str(tmp_path / "out")
    (built / "auto.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(built / "auto.yaml"), "-o", str(tmp_path / "out"), "-v", "0"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "out" / "tiny_build_report.json").read_text())
    steps = report["auto"]["steps"]
    assert steps[0]["name"] == "target defaults" and steps[0]["kept"]
    assert all(s["score"] is None and "time budget" in s["note"] for s in steps[1:])
    assert report["auto"]["met"] is (report["auto"]["score"] >= 0.999999)
    log = (tmp_path / "out" / "npuflow_build.log").read_text()
    assert "accuracy step target defaults" in log
    assert report["auto"]["met"] or "accuracy target 0.999999 was not reached" in log
    assert (tmp_path / "out" / "tiny.npuf").is_file()


def test_a_cpu_int8_build_with_the_default_calibration_type(tmp_path, capsys):
    """``calibration_type: default`` on cpu-int8 (asymmetric uint8 activations) failed with
    NPF_QUANT_CONFIG_CONFLICT ("method 'auto' needs symmetric quantization"): it now means the
    target's own calibration.  The summary says where its latency comes from instead of 0 ms."""
    from npuflow.build.config import load_config
    from npuflow.build.pipeline import _quant_config
    from npuflow.targets import load_target

    _conv_model(tmp_path / "m.onnx")
    photo_crops(tmp_path / "calib", 6)
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["model_parameters"]["march"] = "cpu-int8"
    conf["input_parameters"].update(input_type_rt="bgr", input_layout_rt="NCHW")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Build succeeded" in out and "runs on this host's CPU" in out and "0.000 ms" not in out
    cfg = load_config(conf)
    assert _quant_config(cfg, load_target("cpu-int8"))["activation"] == {}  # the target's defaults
    assert _quant_config(cfg, load_target("bernoulli2"))["activation"] == {"method": "auto"}


def test_an_nhwc_runtime_input_is_described_as_nhwc(built, tmp_path, capsys):
    """``input_layout_rt: NHWC``: the .npuf takes 1x8x8x3, but its manifest (and `npuflow info`)
    said NCHW for every 4-D input; now the layout the device feeds."""
    from npuflow import Session
    from npuflow.compiler.compiled import CompiledModel

    conf = yaml.safe_load((built / "c.yaml").read_text())
    conf["model_parameters"].update(onnx_model=str(built / "m.onnx"), working_dir=str(tmp_path / "out"))
    conf["calibration_parameters"]["cal_data_dir"] = str(built / "calib")
    conf["input_parameters"].update(input_type_rt="bgr", input_layout_rt="NHWC")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0
    capsys.readouterr()
    npuf = tmp_path / "out" / "tiny.npuf"
    (entry,) = CompiledModel.load(npuf).manifest["inputs"]
    assert entry["shape"] == [1, 8, 8, 3] and entry["layout"] == "NHWC"
    assert Session(npuf).run({"data": np.zeros((1, 8, 8, 3), np.uint8)})["y"].shape == (1, 4, 8, 8)
    assert main(["info", str(npuf)]) == 0
    assert re.search(r"input\s+│\s+data\s+│\s+uint8\s+│\s+1x8x8x3\s+│\s+NHWC", capsys.readouterr().out)
