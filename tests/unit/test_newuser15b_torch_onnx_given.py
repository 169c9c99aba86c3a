"""The torch API handed an ONNX model says which call takes one (new-user round 15b).

Before: ``prepare_qat("model.onnx", ...)`` and ``npuflow.torch.quantize(onnx_model, ...)`` read
"module is a str, not an nn.Module" and nothing of ``qat_onnx`` / ``npuflow qat`` or
``npuflow.quantize``."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import npuflow.torch
from npuflow.errors import NpuflowError

MODEL = Path(__file__).resolve().parents[2] / "examples/mnist_cnn.onnx"


@pytest.mark.parametrize("model", [str(MODEL), MODEL, "proto"])
def test_prepare_qat_names_the_onnx_qat(model):
    model = onnx.load(MODEL) if model == "proto" else model
    with pytest.raises(NpuflowError) as err:
        npuflow.torch.prepare_qat(model, (torch.rand(1, 1, 28, 28),), "cpu-int8")
    assert err.value.code == "NPF_TORCH_BAD_INPUTS" and "qat_onnx" in err.value.message and "npuflow qat" in err.value.message


def test_torch_quantize_names_npuflow_quantize():
    with pytest.raises(NpuflowError) as err:
        npuflow.torch.quantize(str(MODEL), (torch.rand(1, 1, 28, 28),), [torch.rand(1, 1, 28, 28)], "cpu-int8")
    assert err.value.code == "NPF_TORCH_BAD_INPUTS" and "npuflow.quantize(model" in err.value.message


def test_other_objects_keep_the_plain_message():
    with pytest.raises(NpuflowError) as err:
        npuflow.torch.prepare_qat(42, (torch.rand(1, 1, 28, 28),), "cpu-int8")
    assert err.value.message.endswith("module is a int, not an nn.Module")
