"""A folder passed as the model (new-user round 14b): ``npuflow.quantize(out_dir, ...)`` or
``npuflow.check("work/", ...)`` said "model file work does not exist" of a folder that exists.
Now ``NPF_MODEL_NOT_ONNX`` says it is a folder and names the ``.onnx`` files in it."""

from __future__ import annotations

import shutil

import pytest

import npuflow
from tests.fixture_models import mnist_cnn


def test_a_folder_holding_models_names_them(tmp_path):
    shutil.copy(mnist_cnn(), tmp_path / "quantized_model.onnx")
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.check(tmp_path, "cpu-int8")
    assert err.value.code == "NPF_MODEL_NOT_ONNX"
    assert "it is a folder holding quantized_model.onnx: pass one of them" in err.value.message
    assert npuflow.check(tmp_path / "quantized_model.onnx", "cpu-int8").summary["nodes"] > 0


def test_an_empty_folder_says_so(tmp_path):
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.load(str(tmp_path))
    assert err.value.code == "NPF_MODEL_NOT_ONNX" and "no .onnx file in it" in err.value.message


def test_a_missing_file_is_still_not_found(tmp_path):
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.load(tmp_path / "nope.onnx")
    assert err.value.code == "NPF_MODEL_NOT_FOUND"
