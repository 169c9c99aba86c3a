"""A mean or scale the input's ``norm_type`` does not apply is said, not dropped without a word.

New-user round 7a: an rknn-style config (``mean_value`` + ``scale_value`` = 1/std) with
``norm_type: 'data_scale'`` built a model that never subtracts the mean: on an RGB digits CNN
top-1 fell from 68.5 % (float) to 19.6 % while the build's cosine (against the same
preprocessing) read 0.99994, and nothing said the mean was unused.
"""
from __future__ import annotations

import copy
import logging

import pytest

from npuflow.build import load_config, resolve_inputs

BASE = {
    "model_parameters": {"onnx_model": "m.onnx", "march": "DPUCZDX8G_ISA1_B4096", "output_model_file_prefix": "m"},
    "input_parameters": {"input_type_train": "rgb", "input_layout_train": "NCHW", "input_type_rt": "rgb",
                         "norm_type": "data_scale", "mean_value": "100 60 155", "scale_value": "0.0125 0.02 0.0143"},
    "calibration_parameters": {"cal_data_dir": "calib", "calibration_type": "default"},
    "compiler_parameters": {"optimize_level": "O3"},
}


def _specs(caplog: pytest.LogCaptureFixture, **inputs: str) -> list:
    conf = copy.deepcopy(BASE)
    conf["input_parameters"].update(inputs)
    with caplog.at_level(logging.WARNING, logger="npuflow"):
        return resolve_inputs(load_config(conf), {"images": [1, 3, 32, 32]})


def test_mean_with_data_scale_warns(caplog: pytest.LogCaptureFixture) -> None:
    spec = _specs(caplog)[0]
    assert spec.mean is None and spec.scale == (0.0125, 0.02, 0.0143)
    assert any("mean_value '100 60 155' of input 'images' is not applied" in r.getMessage()
               and "data_scale" in r.getMessage() for r in caplog.records)


def test_scale_with_data_mean_warns(caplog: pytest.LogCaptureFixture) -> None:
    _specs(caplog, norm_type="data_mean")
    assert [r for r in caplog.records if "scale_value" in r.getMessage() and "not applied" in r.getMessage()]


def test_used_values_are_silent(caplog: pytest.LogCaptureFixture) -> None:
    spec = _specs(caplog, norm_type="data_mean_and_scale")[0]
    assert spec.mean == (100.0, 60.0, 155.0) and not [r for r in caplog.records if "not applied" in r.getMessage()]
