"""Round 23a of new-user flows: check's hint for a sigmoid or GELU the accelerator lacks names the swap.

A YOLOv5-style detector (SiLU after every convolution) on DPUCZDX8G_ISA1_B4096 is 59 compiled
subgraphs: each of its 35 sigmoids runs on the CPU, "Sigmoid (sigmoid) has no DPU implementation",
and check's hint said "Change the layer to fit the limit, or accept CPU execution for it".  The target
runs hard-sigmoid and hard-swish: the hint now says so (and GELU's names a replacement).
"""

from __future__ import annotations

import pytest
from onnx import helper

import npuflow
from tests.onnx_builders import conv_node, model, vi


def _conv_then(op: str):
    conv, w = conv_node("conv", "x", "c", 3, 8)
    act = helper.make_node(op, ["c"], ["s"], name="act")
    mul = helper.make_node("Mul", ["c", "s"], ["y"], name="silu") if op == "Sigmoid" else \
        helper.make_node("Identity", ["s"], ["y"], name="out")
    m = model([conv, act, mul], [vi("x", [1, 3, 8, 8])], [vi("y", None)], [w])
    m.opset_import[0].version = 20  # Gelu
    return m


@pytest.mark.parametrize("op, swap", [("Sigmoid", "nn.Hardswish"), ("Gelu", "nn.Hardswish")])
def test_the_hint_for_a_missing_activation_names_the_hard_variant(op, swap):
    node = npuflow.check(_conv_then(op), "DPUCZDX8G_ISA1_B4096").node("act")
    assert node.device == "CPU" and "has no DPU implementation" in " ".join(node.reasons)
    assert swap in node.hint and "Change the layer to fit the limit" not in node.hint
