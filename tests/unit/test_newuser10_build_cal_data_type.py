"""hb_mapper's ``calibration_parameters: cal_data_type`` (round 10): a user's hb_mapper YAML with
``cal_data_type: 'float32'`` was refused as an unknown key (NPF_BUILD_UNKNOWN_KEYS "Wrong keys").  It is
read now: the dtype every raw (``numpy.tofile``) calibration file must have; a file of another size is
NPF_BUILD_CALIB_FILE_SIZE naming the declared dtype.  Without it the dtype is told by the file's size, as
before.  The build runs on the MNIST CNN end to end."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.build.calibration import CalibrationSet
from npuflow.build.config import load_config
from npuflow.errors import NpuflowError
from npuflow.passes.preprocess import InputPreprocess

rng = np.random.default_rng(0)

CONFIG = """model_parameters:
  onnx_model: '{model}'
  march: 'cpu-int8'
  output_model_file_prefix: 'mnist'
  working_dir: './out'
input_parameters:
  input_name: 'input'
  input_type_train: 'featuremap'
  input_layout_train: 'NCHW'
  input_type_rt: 'featuremap'
  input_layout_rt: 'NCHW'
  input_shape: '1x1x28x28'
  norm_type: 'no_preprocess'
calibration_parameters:
  cal_data_dir: './cal'
  cal_data_type: '{dtype}'
  calibration_type: 'default'
compiler_parameters:
  optimize_level: 'O3'
"""


def _project(tmp_path, model, dtype: str):
    (tmp_path / "cal").mkdir()
    for i in range(3):
        rng.random((1, 1, 28, 28), dtype=np.float32).tofile(tmp_path / "cal" / f"{i}.bin")
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.format(model=model, dtype=dtype))
    return path


def test_cal_data_type_float32_is_read_and_builds(tmp_path, models):
    cfg = _project(tmp_path, models.mnist_cnn(), "float32")
    assert load_config(cfg).calibration_parameters.cal_data_type == "float32"
    npuflow.build(cfg)
    assert (tmp_path / "out" / "mnist.npuf").is_file()


def test_cal_data_type_other_than_the_files_is_refused_naming_it(tmp_path, models):
    cfg = _project(tmp_path, models.mnist_cnn(), "uint8")
    pre = InputPreprocess("input", (1, 1, 28, 28), "featuremap", "NCHW", "featuremap", "NCHW")
    with pytest.raises(NpuflowError) as exc:
        CalibrationSet([(pre, tmp_path / "cal")], images=False,
                       raw_dtype=load_config(cfg).calibration_parameters.cal_data_type)
    assert exc.value.code == "NPF_BUILD_CALIB_FILE_SIZE"
    assert "has 3136 bytes" in exc.value.message and "needs 784 (uint8, cal_data_type)" in exc.value.message


def test_a_cal_data_type_outside_float32_uint8_is_a_bad_value(tmp_path, models):
    with pytest.raises(NpuflowError) as exc:
        load_config(_project(tmp_path, models.mnist_cnn(), "int16"))
    assert exc.value.code == "NPF_BUILD_BAD_ENUM" and "cal_data_type" in exc.value.message, exc.value
