"""What ``torch.onnx.export(module, args, dynamo=True)`` returns (an ``ONNXProgram``; no file is
written without a path) passed to ``npuflow.check/quantize`` (new-user round 9): was
``NPF_MODEL_NOT_ONNX`` "a ONNXProgram is not an ONNX model ... Pass an .onnx file exported by
torch.onnx.export", which is what the user had done.  Its ``model_proto`` is now read (duck-typed:
torch stays optional), and an ``nn.Module`` itself gets a reason naming the export step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuflow
from npuflow.errors import NpuflowError
from tests.fixture_models import mnist_torch


def test_onnx_program_quantizes_like_its_model_proto(tmp_path):
    module = mnist_torch()
    program = torch.onnx.export(module, (torch.zeros(1, 1, 28, 28),), dynamo=True, input_names=["input"])
    rng = np.random.default_rng(0)
    samples = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(2)]
    assert npuflow.check(program, "cpu-int8").summary["nodes"] > 0
    got = npuflow.quantize(program, samples, "cpu-int8", warn=False)
    want = npuflow.quantize(program.model_proto, samples, "cpu-int8", warn=False)
    a = got.save(tmp_path / "a")["quantized_model"].read_bytes()
    assert a == want.save(tmp_path / "b")["quantized_model"].read_bytes()
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(module, samples, "cpu-int8")
    assert exc.value.code == "NPF_MODEL_NOT_ONNX" and "torch.onnx.export(module" in exc.value.message
