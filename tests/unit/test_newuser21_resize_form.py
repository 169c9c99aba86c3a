"""Round 21 of new-user flows: BiSeNet's x8 bilinear head on bernoulli2.

A linear ``Resize`` runs as a depthwise ``ConvTranspose``; where the target rejects that form it
stays a ``Resize`` on the CPU, and check said only "the float passes write it as a depthwise
ConvTranspose ..., where the target's depthwise transposed convolution accepts that form": the
user could not tell which limit (bernoulli2: stride 2 or 4, kernel at most 14).  The reason now
names the form's kernel and stride.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow


def _conv_upsample(factor: int) -> onnx.ModelProto:
    """Conv 3x3 (2 -> 4) -> bilinear Resize x ``factor`` (half-pixel): a segmentation head."""
    inits = [numpy_helper.from_array(np.full((4, 2, 3, 3), 0.1, np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], name="up", mode="linear")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_rejected_form_is_named_with_its_kernel_and_stride():
    node = npuflow.check(_conv_upsample(8), "bernoulli2").node("up")
    assert node.device == "CPU"
    assert "depthwise ConvTranspose (kernel 16x1 stride 8x1, then kernel 1x16 stride 1x8)" in " ".join(node.reasons)


def test_an_accepted_form_runs_on_the_accelerator():
    assert npuflow.check(_conv_upsample(4), "bernoulli2").node("up").device == "NPU"
