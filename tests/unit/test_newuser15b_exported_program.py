"""``npuflow.quantize(torch.export.export(net, (x,)), ...)`` (new-user round 15b).

Before: "a ExportedProgram is not an ONNX model: the model is a path, an onnx.ModelProto, the
model's bytes or a torch ONNXProgram", with no word of how to get the one from the other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuflow
from npuflow.errors import NpuflowError


def test_an_exported_program_names_the_conversion_and_the_conversion_quantizes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    x = torch.rand(1, 1, 8, 8)
    program = torch.export.export(net, (x,))
    calib = [np.random.default_rng(i).random((1, 1, 8, 8), dtype=np.float32) for i in range(2)]
    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(program, calib, "cpu-int8")
    assert err.value.code == "NPF_MODEL_NOT_ONNX" and "torch.onnx.export(program, dynamo=True)" in err.value.message
    quantized = npuflow.quantize(torch.onnx.export(program, dynamo=True), calib, "cpu-int8", warn=False)
    assert quantized.model.graph.node
