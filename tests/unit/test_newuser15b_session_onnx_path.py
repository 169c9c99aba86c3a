"""``npuflow.Session("quantized_model.onnx")``, as ``onnxruntime.InferenceSession`` takes it (round 15b).

Before: "is not an npuflow compiled model: no NPUFLOW signature", hint "Pass a .npuf file", with
no word of compiling the ONNX model or of ``npuflow.ort.InferenceSession``."""

from __future__ import annotations

from pathlib import Path

import pytest

import npuflow
from npuflow.errors import NpuflowError

REPO = Path(__file__).resolve().parents[2]


def test_an_onnx_path_names_compile_and_the_ort_session():
    with pytest.raises(NpuflowError) as err:
        npuflow.Session(REPO / "examples/mnist_cnn.onnx")
    assert err.value.code == "NPF_COMPILE_NOT_NPUF"
    assert "npuflow.compile(path, target)" in err.value.message and "npuflow.ort.InferenceSession" in err.value.message


def test_another_file_keeps_the_plain_reason(tmp_path):
    (tmp_path / "notes.bin").write_bytes(b"not a model at all")
    with pytest.raises(NpuflowError) as err:
        npuflow.Session(tmp_path / "notes.bin")
    assert err.value.message.endswith("no NPUFLOW signature")
