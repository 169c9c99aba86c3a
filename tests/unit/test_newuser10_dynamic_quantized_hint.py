"""Quantizing a model ONNX Runtime quantized dynamically (round 10: ddddocr's ``common_old.onnx``,
``quantize_dynamic``'s ConvInteger/DynamicQuantizeLSTM): ``NPF_QUANT_ALREADY_QUANTIZED``'s hint said only
"compile it as it is", and compile then refused it (``NPF_COMPILE_DYNAMIC_QUANTIZATION``).  The hint
now says that such a model can only be quantized from its float model."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime import quantization

import npuflow
from npuflow.errors import NpuflowError


def test_dynamic_model_hint_points_to_the_float_model(tmp_path, models):
    dynamic = tmp_path / "mnist_dynamic.onnx"
    quantization.quantize_dynamic(str(models.mnist_cnn()), str(dynamic))
    feeds = [{"input": np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)}]
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(str(dynamic), feeds, "cpu-int8")
    assert exc.value.code == "NPF_QUANT_ALREADY_QUANTIZED"
    assert "DynamicQuantizeLinear" in exc.value.message
    assert "the only way for a model quantized dynamically" in exc.value.hint and "compile refuses" in exc.value.hint
    with pytest.raises(NpuflowError) as refused:  # what the hint warns of
        npuflow.compile(str(dynamic), "cpu-int8")
    assert refused.value.code == "NPF_COMPILE_DYNAMIC_QUANTIZATION"
