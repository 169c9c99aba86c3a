"""``QuantizedModel.save("model_quant.onnx")``, as ONNX Runtime's ``quantize_static(model_input,
model_output, ...)`` users write it (new-user round 15b).

Before: it made a *folder* named ``model_quant.onnx`` holding five files, and
``onnxruntime.InferenceSession("model_quant.onnx")`` then failed on a directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quantized():
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:4].reshape(-1, 1, 1, 28, 28)
    return npuflow.quantize(str(REPO / "examples/mnist_cnn.onnx"), [(d / 255.0).astype(np.float32) for d in digits],
                            "cpu-int8")


def test_an_onnx_file_name_is_a_coded_error_and_writes_nothing(quantized, tmp_path):
    with pytest.raises(NpuflowError) as err:
        quantized.save(tmp_path / "mnist_quant.onnx")
    assert err.value.code == "NPF_QUANT_SAVE_NEEDS_FOLDER" and "quantized_model.onnx" in err.value.hint
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_saved_as_before(quantized, tmp_path):
    files = quantized.save(tmp_path / "out")
    assert files["quantized_model"] == tmp_path / "out" / "quantized_model.onnx" and files["quantized_model"].is_file()


def test_onnx_runtime_argument_order_names_npuflow_s_order(tmp_path):
    """``quantize(model_input, model_output, reader)``: was ``NPF_TARGET_UNKNOWN "unknown target '<Reader>'"``."""

    class Reader:  # ONNX Runtime's CalibrationDataReader protocol
        def get_next(self):
            return None

    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(str(REPO / "examples/mnist_cnn.onnx"), str(tmp_path / "mnist_quant.onnx"), Reader())
    assert err.value.code == "NPF_QUANT_CALIB_SOURCE" and "quantize_static" in err.value.message
