"""A key written twice in one YAML mapping (new-user round 8: a build config with two
``model_parameters`` groups, the second pasted from another project): YAML's loaders keep the last
without a word, so ``npuflow build`` built the second group's model.  Now every YAML npuflow reads
(build configs, quantizer configs, target files: ``safe_yaml.load``) refuses it with the key and
its line; keys a ``<<`` merge brings in may still be overridden."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import npuflow
from npuflow import safe_yaml
from npuflow.errors import NpuflowError

BUILD = """model_parameters:
  onnx_model: 'a.onnx'
  march: 'bernoulli2'
input_parameters:
  input_type_train: 'featuremap'
calibration_parameters:
  cal_data_dir: './cal'
compiler_parameters:
  optimize_level: 'O3'
model_parameters:
  onnx_model: 'b.onnx'
  march: 'cpu-int8'
"""


def test_build_config_with_a_group_twice_is_refused(tmp_path):
    from npuflow.build.config import load_config
    path = tmp_path / "b.yaml"
    path.write_text(BUILD)
    with pytest.raises(NpuflowError) as exc:
        load_config(path)
    assert exc.value.code == "NPF_BUILD_CONFIG_INVALID_YAML"
    assert "'model_parameters' is written twice" in str(exc.value) and "line 10" in str(exc.value)


def test_quant_config_with_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("calib_method: minmax\ncalib_method: percentile\n")
    with pytest.raises(NpuflowError) as exc:
        npuflow.QuantConfig.load(path)
    assert exc.value.code == "NPF_QUANT_CONFIG_FILE"
    assert "'calib_method' is written twice" in str(exc.value)


def test_nested_duplicate_and_merge_keys():
    with pytest.raises(yaml.YAMLError, match="'q' is written twice"):
        safe_yaml.load("a:\n  q: 1\n  q: 2\n")
    assert safe_yaml.load("base: &b {p: 1, q: 2}\nd:\n  <<: *b\n  q: 3\n")["d"] == {"p": 1, "q": 3}
    assert safe_yaml.load("a: {q: 1}\nb: {q: 2}\n") == {"a": {"q": 1}, "b": {"q": 2}}


def test_every_bundled_target_file_still_loads():
    files = sorted(Path(npuflow.targets.__file__).parent.rglob("*.yaml"))
    assert files
    for f in files:
        safe_yaml.load(f.read_text())
