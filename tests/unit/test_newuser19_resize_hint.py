"""Round 19 of new-user flows: the hint of a linear Resize that the target cannot run.

A Wave-U-Net (round 19: ``F.interpolate(mode="linear")`` between its decoder convolutions) has its four
``Resize`` nodes on the CPU on every target, rightly (only nearest-neighbour Resize is lowered), but
``check``'s hint read "Reduce the channel count or split the layer into smaller ones the target
accepts": the hint rules matched "size" inside "Resize mode 'linear' is not lowered".  The hint now
says what helps: a nearest Resize (or a ConvTranspose), or the CPU.  Since session 30 a linear Resize
by 2 or 4 with half-pixel coordinates runs on the accelerator as a depthwise ConvTranspose
(``passes/resize_linear.py``); one with ``align_corners`` coordinates still gets the hint where it stays
(bernoulli2; DPUCZDX8G and cpu-int8 run it as MatMuls since session 33, ``passes/resize_matmul.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow


def _upsampler(mode: str, coords: str = "align_corners") -> onnx.ModelProto:
    """Conv (3x3) -> Resize x2 (``mode``) -> Conv (3x3): a decoder step."""
    rng = np.random.default_rng(19)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["u"], name="up", mode=mode,
                              coordinate_transformation_mode=coords),
             helper.make_node("Conv", ["u", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_linear_resize_is_told_to_be_nearest_not_to_lose_channels():
    target = "bernoulli2"  # since session 33 DPUCZDX8G and cpu-int8 run align_corners as MatMuls
    up = npuflow.check(_upsampler("linear"), target).node("up")
    assert up.device == "CPU" and any("linear" in r for r in up.reasons)
    assert "nearest" in up.hint and "align_corners=False" in up.hint and "channel" not in up.hint
    assert npuflow.check(_upsampler("nearest", "half_pixel"), target).node("up").device != "CPU"
