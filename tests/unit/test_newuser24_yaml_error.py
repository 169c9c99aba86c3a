"""A YAML file npuflow cannot parse is refused with the problem and its line (new-user round 24):
a tab-indented quantizer config read "cannot read quantization config q.yaml: while scanning for
the next token", PyYAML's context line, which names neither the tab nor where it is.  Quantizer
configs, build configs and target files now share ``safe_yaml.describe``."""

from __future__ import annotations

import pytest

import npuflow
from npuflow.build.config import load_config
from npuflow.errors import NpuflowError
from npuflow.targets import load_target


def _refusal(load, path):
    with pytest.raises(NpuflowError) as exc:
        load(path)
    return exc.value


def test_tab_indented_quant_config_names_the_tab_and_its_line(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("calib_method: minmax\nweight:\n\tbits: 8\n")
    err = _refusal(npuflow.QuantConfig.load, path)
    assert err.code == "NPF_QUANT_CONFIG_FILE"
    assert "a tab" in str(err) and "line 3, column 1" in str(err)


def test_unclosed_list_in_quant_config_says_what_was_expected(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("keep_float: [a, b\ncalib_method: minmax\n")
    err = _refusal(npuflow.QuantConfig.load, path)
    assert "expected ',' or ']'" in str(err) and "line 2" in str(err)


def test_tab_in_build_config_and_target_file(tmp_path):
    build = tmp_path / "b.yaml"
    build.write_text("model_parameters:\n\tonnx_model: a.onnx\n")
    err = _refusal(load_config, build)
    assert err.code == "NPF_BUILD_CONFIG_INVALID_YAML" and "a tab" in str(err) and "line 2" in str(err)
    target = tmp_path / "t.yaml"
    target.write_text("name: mine\nops:\n\tconv2d: {}\n")
    err = _refusal(load_target, target)
    assert err.code == "NPF_TARGET_BAD_FILE" and "a tab" in str(err) and "line 3" in str(err)
