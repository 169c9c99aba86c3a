"""An exported ONNX model deployed as ONNX Runtime users deploy files (new-user round 15b).

Before: copying ``model.npuf`` and ``model_ort.onnx`` together to another folder was
``NPF_ORT_EXPORT_STALE`` ("the file is missing": the export names the ``.npuf`` by absolute path)
until exported again there; ``export(compiled_model, ...)`` was pathlib's uncoded ``TypeError``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import npuflow
from npuflow import ort_export
from npuflow.errors import NpuflowError

REPO = Path(__file__).resolve().parents[2]
TARGET = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def compiled():
    """The bundled MNIST CNN compiled for the DPU, with one digit to run."""
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:5].reshape(-1, 1, 1, 28, 28)
    feeds = [(d / 255.0).astype(np.float32) for d in digits]
    quantized = npuflow.quantize(str(REPO / "examples/mnist_cnn.onnx"), feeds[:4], TARGET)
    return npuflow.compile(quantized, TARGET), feeds[4]


def _ort(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), ort_export.session_options(model), providers=["CPUExecutionProvider"])


def test_npuf_and_export_copied_together_run_elsewhere(compiled, tmp_path):
    model, x = compiled
    build, device = tmp_path / "build", tmp_path / "device"
    build.mkdir()
    npuf = model.save(build / "mnist.npuf")
    ort_export.export(npuf, build / "mnist_ort.onnx")
    want = npuflow.Session(npuf).run({"input": x})["logits"]
    shutil.copytree(build, device)
    shutil.rmtree(build)  # the recorded absolute path is gone
    np.testing.assert_array_equal(_ort(device / "mnist_ort.onnx").run(None, {"input": x})[0], want)


def test_a_different_file_beside_the_export_is_still_stale(compiled, tmp_path):
    model, _ = compiled
    (tmp_path / "build").mkdir()
    (tmp_path / "device").mkdir()
    npuf = model.save(tmp_path / "build" / "mnist.npuf")
    ort_export.export(npuf, tmp_path / "device" / "mnist_ort.onnx")
    npuf.unlink()
    shutil.copy(REPO / "examples/mnist_cnn.onnx", tmp_path / "device" / "mnist.npuf")  # same name, other bytes
    with pytest.raises(NpuflowError) as err:
        ort_export.session_options(tmp_path / "device" / "mnist_ort.onnx")
    assert err.value.code == "NPF_ORT_EXPORT_STALE" and "not the exported file" in err.value.message


def test_export_takes_a_loaded_compiled_model_and_codes_an_unsaved_one(compiled, tmp_path):
    model, x = compiled
    with pytest.raises(NpuflowError) as err:
        ort_export.export(model, tmp_path / "unsaved_ort.onnx")
    assert err.value.code == "NPF_ORT_EXPORT_NOT_SAVED" and "save" in err.value.hint
    npuf = model.save(tmp_path / "saved.npuf")
    ort_export.export(npuflow.CompiledModel.load(npuf), tmp_path / "saved_ort.onnx")
    want = npuflow.Session(npuf).run({"input": x})["logits"]
    np.testing.assert_array_equal(_ort(tmp_path / "saved_ort.onnx").run(None, {"input": x})[0], want)
