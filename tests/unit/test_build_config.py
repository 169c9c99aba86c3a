"""The build config: every validation error code through the CLI, the template, aliases."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from npuflow.build import TEMPLATE, load_config, resolve_inputs
from npuflow.build.config import ALLOWED_RT
from npuflow.cli.app import main
from npuflow.errors import NpuflowError

BASE = {
    "model_parameters": {
        "onnx_model": "m.onnx", "march": "DPUCZDX8G_ISA1_B4096", "output_model_file_prefix": "tiny",
        "working_dir": "out", "log_level": "info",
    },
    "input_parameters": {
        "input_type_train": "bgr", "input_layout_train": "NCHW", "input_type_rt": "nv12",
        "norm_type": "data_mean_and_scale", "mean_value": "103.94 116.78 123.68", "scale_value": "0.017",
    },
    "calibration_parameters": {"cal_data_dir": "calib", "calibration_type": "default"},
    "compiler_parameters": {"compile_mode": "latency", "optimize_level": "O3"},
}


def _conv_model(path: Path, inputs: tuple[str, ...] = ("data",)) -> None:
    """A tiny Conv model on 1x3x8x8 input(s) (several inputs are added first)."""
    vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in inputs]
    nodes, first = [], inputs[0]
    if len(inputs) > 1:
        nodes.append(helper.make_node("Add", list(inputs[:2]), ["sum"], name="add"))
        first = "sum"
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32) / 27, "w")
    nodes.append(helper.make_node("Conv", [first, "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv"], ["y"], name="relu"))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "tiny", vis, [out], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def _calib(folder: Path, count: int = 3, nbytes: int = 192) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.full(nbytes, (40 * i) % 256, np.uint8).tofile(folder / f"{i:03d}.bgr")


def photo_crops(folder: Path, count: int) -> None:
    """``count`` 8x8 crops of a real photo as raw BGR NCHW uint8 files (a tiny build's calibration)."""
    from skimage import data as skdata

    photo = skdata.astronaut()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        crop = photo[40 * i:40 * i + 8, 30 * i:30 * i + 8, ::-1]  # RGB -> BGR
        np.ascontiguousarray(crop.transpose(2, 0, 1)[None]).tofile(folder / f"{i:02d}.bgr")


@pytest.fixture
def project(tmp_path):
    _conv_model(tmp_path / "m.onnx")
    _conv_model(tmp_path / "two.onnx", ("a", "b"))
    _calib(tmp_path / "calib")
    dyn = onnx.load(tmp_path / "m.onnx")
    dyn.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(dyn, tmp_path / "dyn.onnx")
    return tmp_path


def _write(folder: Path, config: dict | str, name: str = "c.yaml") -> Path:
    path = folder / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def _edit(**groups) -> dict:
    """BASE with per-group edits; a value of None deletes the key."""
    conf = copy.deepcopy(BASE)
    for group, edits in groups.items():
        if edits is None:
            del conf[group]
            continue
        for key, value in edits.items():
            if value is None:
                conf[group].pop(key, None)
            else:
                conf[group][key] = value
    return conf


def _build(capsys, path) -> tuple[int, str]:
    code = main(["build", str(path)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


CASES = [
    ("missing-model-keys", dict(model_parameters={"onnx_model": None, "output_model_file_prefix": None}),
     "NPF_BUILD_MISSING_KEYS", "Key 'model_parameters' error: Missing keys: 'onnx_model', 'output_model_file_prefix'"),
    ("missing-group", dict(compiler_parameters=None), "NPF_BUILD_MISSING_KEYS", "'compiler_parameters'"),
    ("missing-mean", dict(input_parameters={"mean_value": None}), "NPF_BUILD_MISSING_KEYS", "'mean_value'"),
    ("dynamic-input-needs-shape", dict(model_parameters={"onnx_model": "dyn.onnx"}),
     "NPF_BUILD_MISSING_KEYS", "'input_shape' (input 'data' has dynamic dimensions)"),
    ("missing-optimize-level", dict(compiler_parameters={"optimize_level": None}),
     "NPF_BUILD_MISSING_KEYS", "Missing keys: 'optimize_level'"),
    ("unknown-key", dict(input_parameters={"input_typ_rt": "nv12"}),
     "NPF_BUILD_UNKNOWN_KEYS", "Did you mean 'input_type_rt'"),
    ("caffe", dict(model_parameters={"caffe_model": "x.caffemodel"}), "NPF_BUILD_UNKNOWN_KEYS", "ONNX models only"),
    ("bad-rt-type", dict(input_parameters={"input_type_rt": "nv21"}), "NPF_BUILD_BAD_ENUM", "'nv21' is not one of"),
    ("bad-log-level", dict(model_parameters={"log_level": "verbose"}), "NPF_BUILD_BAD_ENUM", "log_level"),
    ("bad-calibration-type", dict(calibration_parameters={"calibration_type": "mix"}),
     "NPF_BUILD_BAD_ENUM", "calibration_type: 'mix'"),
    ("bad-percentile", dict(calibration_parameters={"max_percentile": 1.5}), "NPF_BUILD_BAD_VALUE", "max_percentile"),
    ("bad-batch", dict(input_parameters={"input_batch": 0}), "NPF_BUILD_BAD_VALUE", "input_batch"),
    # input_batch 4 was accepted and a batch-1 model built (MTCNN onet: the .npuf took 1x72x48)
    ("batch-not-applied", dict(input_parameters={"input_batch": 4}), "NPF_BUILD_BAD_VALUE",
     "npuflow compiles the batch of input_shape"),
    ("range-without-yuv", dict(input_parameters={"input_type_rt": "bgr", "input_space_and_range": "bt601_video"}),
     "NPF_BUILD_BAD_VALUE", "only applies to nv12/yuv444"),
    ("count", dict(input_parameters={"input_type_rt": "nv12; nv12"}), "NPF_BUILD_COUNT_MISMATCH",
     "input_type_rt has 2 value(s) but input_name names 1 input(s)"),
    ("channels-of-mean", dict(input_parameters={"mean_value": "1 2"}), "NPF_BUILD_NORM_VALUE_COUNT",
     "mean_value for input 'data' has 2 number(s); it needs 1 or 3"),
    ("pair", dict(input_parameters={"input_type_train": "rgb", "input_type_rt": "gray"}),
     "NPF_BUILD_TYPE_PAIR", "input_type_rt 'gray' cannot feed input_type_train 'rgb'"),
    ("gray-on-3-channels", dict(input_parameters={"input_type_train": "gray", "input_type_rt": "gray",
                                                  "mean_value": "128"}),
     "NPF_BUILD_TYPE_CHANNELS", "needs 1 channel(s)"),
    ("nv12-odd", dict(input_parameters={"input_shape": "1x3x7x8"}), "NPF_BUILD_NV12_ODD", "7x8"),
    ("output-node", dict(model_parameters={"output_nodes": "nope"}), "NPF_BUILD_OUTPUT_NODE_UNKNOWN", "'nope'"),
    ("unknown-input", dict(input_parameters={"input_name": "nope"}), "NPF_MODEL_UNKNOWN_INPUT", "'nope'"),
    ("calib-missing", dict(calibration_parameters={"cal_data_dir": "nowhere"}),
     "NPF_BUILD_CALIB_DIR_NOT_FOUND", "nowhere"),
    ("march", dict(model_parameters={"march": "bernoulli9"}), "NPF_TARGET_UNKNOWN", "bernoulli9"),
    ("budget-without-target", dict(calibration_parameters={"time_budget": 60}), "NPF_BUILD_BAD_VALUE",
     "calibration_parameters.time_budget: 60"),
    ("fallback-without-target", dict(calibration_parameters={"allow_cpu_fallback": True}), "NPF_BUILD_BAD_VALUE",
     "set min_similarity too"),
]


@pytest.mark.parametrize("case,edits,code,text", CASES, ids=[c[0] for c in CASES])
def test_config_errors_through_cli(project, capsys, case, edits, code, text):
    exit_code, out = _build(capsys, _write(project, _edit(**edits)))
    assert exit_code == 2, out
    assert f"ERROR [{code}]" in out and text in out, out
    assert "Traceback" not in out


def test_missing_config_and_bad_yaml(project, capsys):
    code, out = _build(capsys, project / "nope.yaml")
    assert code == 2 and "ERROR [NPF_BUILD_CONFIG_NOT_FOUND]" in out
    code, out = _build(capsys, _write(project, "model_parameters: [unclosed\n"))
    assert code == 2 and "ERROR [NPF_BUILD_CONFIG_INVALID_YAML]" in out
    code, out = _build(capsys, _write(project, "- just\n- a list\n"))
    assert code == 2 and "ERROR [NPF_BUILD_CONFIG_INVALID_YAML]" in out and "not a mapping" in out


def test_multi_input_needs_input_name_and_matching_calibration(project, capsys):
    two = dict(model_parameters={"onnx_model": "two.onnx"})
    code, out = _build(capsys, _write(project, _edit(**two)))
    assert code == 2 and "ERROR [NPF_BUILD_INPUT_NAME_REQUIRED]" in out and "a, b" in out
    _calib(project / "calib_b", count=2)
    conf = _edit(**two, input_parameters={
        "input_name": "a; b", "input_type_train": "bgr; bgr", "input_layout_train": "NCHW; NCHW", "input_type_rt": "bgr; nv12",
        "norm_type": "no_preprocess; data_scale", "mean_value": None, "scale_value": "None; 0.5"},
        calibration_parameters={"cal_data_dir": "calib; calib_b"})
    code, out = _build(capsys, _write(project, conf))
    assert code == 2 and "ERROR [NPF_BUILD_CALIB_COUNT_MISMATCH]" in out and "a: 3, b: 2" in out


def test_calibration_file_errors_name_the_file(project, capsys):
    (project / "empty").mkdir()
    code, out = _build(capsys, _write(project, _edit(calibration_parameters={"cal_data_dir": "empty"})))
    assert code == 2 and "ERROR [NPF_BUILD_CALIB_EMPTY]" in out and "empty" in out
    _calib(project / "short", count=2)
    np.zeros(100, np.uint8).tofile(project / "short" / "005.bgr")
    code, out = _build(capsys, _write(project, _edit(calibration_parameters={"cal_data_dir": "short"})))
    assert code == 2 and "ERROR [NPF_BUILD_CALIB_FILE_SIZE]" in out and "005.bgr has 100 bytes" in out
    (project / "images").mkdir()
    (project / "images" / "cat.jpg").write_text("not really a jpeg")
    conf = _edit(calibration_parameters={"cal_data_dir": "images", "preprocess_on": True})
    code, out = _build(capsys, _write(project, conf))
    assert code == 2 and "ERROR [NPF_BUILD_CALIB_IMAGE]" in out and "cat.jpg" in out


def test_failed_build_leaves_the_earlier_build_untouched(project, capsys):
    out_dir = project / "out"
    out_dir.mkdir()
    (out_dir / "tiny.npuf").write_bytes(b"from an earlier build")
    code, _ = _build(capsys, _write(project, _edit(calibration_parameters={"cal_data_dir": "nowhere"})))
    assert code == 2
    left = sorted(p.name for p in out_dir.iterdir())
    assert left == ["npuflow_build.log", "tiny.npuf"], left
    assert (out_dir / "tiny.npuf").read_bytes() == b"from an earlier build"
    assert "NPF_BUILD_CALIB_DIR_NOT_FOUND" in (out_dir / "npuflow_build.log").read_text()


def test_template_prints_parses_and_validates(capsys):
    assert main(["build", "--template"]) == 0
    text = capsys.readouterr().out
    assert text == TEMPLATE
    conf = load_config(yaml.safe_load(text))
    specs = resolve_inputs(conf, {"data": [1, 3, 224, 224]})
    assert specs[0].type_rt == "nv12" and specs[0].mean == (103.94, 116.78, 123.68) and specs[0].scale == (0.017,)
    for group in ("model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters"):
        for key in type(getattr(conf, group)).model_fields:
            assert key in text, f"{group}.{key} is not documented in the template"


def _commented_examples(text: str) -> list[tuple[str, str]]:
    """Each commented example of the template as (name, the template with only it uncommented):
    a line ``# KEY: ...`` whose KEY is a group or a key of the config, with the more indented
    commented lines under it."""
    from npuflow.build.config import GROUPS, _accepted_keys
    from npuflow.build.config import CalibrationParameters, CompilerParameters, InputParameters, ModelParameters

    keys = {*GROUPS, "custom_op", "npuflow"}
    for cls in (ModelParameters, InputParameters, CalibrationParameters, CompilerParameters):
        keys |= set(_accepted_keys(cls))
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = re.fullmatch(r"( *)# (\w+):( .*)?", line)
        if not m or m.group(2) not in keys:
            continue
        indent, end = m.group(1), i + 1
        while end < len(lines) and re.match(rf"{indent}#   ", lines[end]):
            end += 1
        block = [indent + row[len(indent) + 2:] for row in lines[i:end]]
        found.append((m.group(2), "\n".join(lines[:i] + block + lines[end:])))
    return found


def test_every_commented_template_example_is_valid_when_uncommented():
    """Issue 20: ``npuflow:`` / ``calibration: method: percentile`` failed when uncommented."""
    from npuflow.build.pipeline import _quant_config
    from npuflow.quant.config import QuantConfig

    examples = _commented_examples(TEMPLATE)
    assert {"output_nodes", "run_on_cpu", "run_on_npu", "npuflow", "custom_op"} <= {name for name, _ in examples}
    for name, text in examples:
        conf = load_config(yaml.safe_load(text))
        QuantConfig.from_dict(_quant_config(conf))
        if name == "npuflow":
            assert conf.npuflow, text
        if name == "custom_op":
            assert conf.custom_op.op_register_files == "my_ops.py", text


def test_config_typos_get_a_suggestion(tmp_path):
    with pytest.raises(NpuflowError) as exc:
        load_config({**yaml.safe_load(TEMPLATE), "npuflow": {"activation": {"methd": "percentile"}}})
    assert exc.value.code == "NPF_QUANT_BAD_CONFIG" and "did you mean 'method'?" in exc.value.message
    with pytest.raises(NpuflowError) as exc:
        load_config({**yaml.safe_load(TEMPLATE), "calibration_parameter": {}})
    assert "Did you mean 'calibration_parameters'?" in exc.value.hint


def test_hb_mapper_command_line_spelling(project, capsys):
    """``--config X --model-type onnx`` as hb_mapper users type it; caffe is refused with a code."""
    path = _write(project, _edit(calibration_parameters={"cal_data_dir": "nowhere"}))
    assert main(["build", "--config", str(path), "--model-type", "onnx"]) == 2
    assert "NPF_BUILD_CALIB_DIR_NOT_FOUND" in capsys.readouterr().err
    assert main(["build", "--config", str(path), "--model-type", "caffe"]) == 2
    assert "ERROR [NPF_BUILD_BAD_ENUM] command line.--model-type: 'caffe'" in capsys.readouterr().err


def test_alias_spellings_are_accepted():
    conf = copy.deepcopy(BASE)
    ip = conf["input_parameters"]
    ip["mean_values"], ip["scale_values"] = ip.pop("mean_value"), ip.pop("scale_value")
    conf["calibration_parameters"].update(perchannel=True, run_on_bpu="conv; relu")
    cfg = load_config(conf)
    assert cfg.input_parameters.mean_value == "103.94 116.78 123.68"
    assert cfg.calibration_parameters.per_channel is True
    assert cfg.calibration_parameters.run_on_npu == "conv; relu"


def test_type_table_is_the_seeds():
    """The 5x6 train/rt table of seed 004 L1162-1178."""
    yes = {(t, r) for t, rs in ALLOWED_RT.items() for r in rs}
    assert len(yes) == 2 + 4 + 4 + 1 + 1
    assert ("yuv444", "rgb") not in yes and ("gray", "nv12") not in yes and ("rgb", "nv12") in yes


def test_output_nodes_become_the_complete_output_set(project):
    """``output_nodes`` by node name (or tensor name) cuts the model there, as hb_mapper does."""
    from npuflow.build.pipeline import _cut_outputs
    from npuflow.model import load

    model = load(project / "m.onnx")
    cut = _cut_outputs(model, ["conv"])
    assert [o.name for o in cut.graph.output] == ["conv"] and [n.op_type for n in cut.graph.node] == ["Conv"]
    assert [o.name for o in _cut_outputs(model, ["conv", "y"]).graph.output] == ["conv", "y"]


def test_quantizer_config_from_calibration_parameters_and_npuflow_section():
    from npuflow.build.pipeline import _quant_config

    conf = _edit(calibration_parameters={"calibration_type": "max", "max_percentile": 0.9999,
                                         "run_on_cpu": "conv; relu"})
    assert _quant_config(load_config(conf)) == {
        "input": {"method": "percentile", "percentile": 99.99}, "activation": {"method": "percentile", "percentile": 99.99},
        "keep_float": ["conv", "relu"]}
    conf["npuflow"] = {"activation": {"method": "mse"}, "include_cle": True}
    merged = _quant_config(load_config(conf))
    assert merged["activation"] == {"method": "mse", "percentile": 99.99} and merged["include_cle"] is True
    kl = _quant_config(load_config(_edit(calibration_parameters={"calibration_type": "kl"})))
    assert kl["activation"] == {"method": "entropy"}


def test_qat_device_key_reaches_the_qat_and_warns_without_a_qat_budget(tmp_path, monkeypatch, capsys, caplog):
    """``calibration_parameters: qat_device`` goes to the QAT as ``device`` (the QAT itself is
    stubbed); without ``qat_epochs``/``qat_minutes`` it, like ``qat_nproc``, does nothing, which
    the build says instead of ignoring the key silently."""
    from npuflow.build.pipeline import _quant_config
    from npuflow.torch import onnx_qat

    conf = copy.deepcopy(BASE)
    for key, value in (("qat_device", "cuda"), ("qat_nproc", 2), ("qat_ema", 0.98)):
        alone = copy.deepcopy(conf)
        alone["calibration_parameters"][key] = value
        caplog.clear()
        _quant_config(load_config(alone))
        assert any(key in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records), key

    _conv_model(tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i in range(2):
        np.full((1, 3, 8, 8), 16 * i, np.uint8).tofile(tmp_path / "calib" / f"{i}.bgr")
    conf["input_parameters"]["input_type_rt"] = "bgr"
    conf["calibration_parameters"].update(qat_minutes=1, qat_device="cuda:1", qat_ema=0.98)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    seen = {}

    def stub(*args, **kwargs):
        seen.update(kwargs)
        raise NpuflowError("NPF_QAT_BAD_DEVICE", device=kwargs["device"], reason="stub")

    monkeypatch.setattr(onnx_qat, "qat_onnx", stub)
    assert main(["build", str(tmp_path / "c.yaml")]) == 2
    assert "cuda:1" in capsys.readouterr().err
    assert seen["device"] == "cuda:1" and seen["minutes"] == 1 and seen["ema_decay"] == 0.98
    with pytest.raises(NpuflowError) as err:  # the decay's bounds, as --ema's
        load_config({**conf, "calibration_parameters": {**conf["calibration_parameters"], "qat_ema": 1.0}})
    assert "qat_ema" in err.value.message


def test_every_problem_of_the_config_comes_in_one_error(project, capsys):
    """New-user round 24: a YAML missing ``model_parameters.onnx_model`` and two groups was reported
    one group at a time ("Missing keys: 'input_parameters', 'compiler_parameters'", the model path only
    after those were added).  Now every missing and unknown key and refused value, of every group, at once."""
    conf = _edit(model_parameters={"onnx_model": None, "log_level": "loud", "marhc": "x"}, input_parameters=None,
                 compiler_parameters=None, calibration_parameters={"calibration_type": None})
    code, out = _build(capsys, _write(project, conf))
    text = " ".join(out.split())
    assert code == 2 and "ERROR [NPF_BUILD_CONFIG_PROBLEMS]" in text and "has 5 problems" in text, text
    for found in ("[NPF_BUILD_MISSING_KEYS] Key 'config' error: Missing keys: 'input_parameters', 'compiler_parameters'",
                  "[NPF_BUILD_UNKNOWN_KEYS] Key 'model_parameters' error: Wrong keys: 'marhc' (Did you mean 'march'?",
                  "[NPF_BUILD_MISSING_KEYS] Key 'model_parameters' error: Missing keys: 'onnx_model'",
                  "[NPF_BUILD_BAD_ENUM] model_parameters.log_level: 'loud' is not one of",
                  "[NPF_BUILD_MISSING_KEYS] Key 'calibration_parameters' error: Missing keys: 'calibration_type'"):
        assert found in text, (found, text)
    assert "Traceback" not in out
