"""Round 21 of new-user flows: DnCNN's residual ``x - f(x)`` on targets that add but do not subtract.

A DnCNN denoiser predicts the noise and returns ``noisy - noise``: an exported ``Sub`` of the input
and the last convolution's output, which DPUCZDX8G and bernoulli2 have no element-wise subtract
for ("Sub (eltwise_sub) has no DPU implementation"): the model's last op ran in float on the CPU
(2 compiled subgraphs).  ``target_rewrites`` now negates that convolution and adds: one subgraph.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 2, 8, 8]


def _dncnn(bias: bool = True) -> onnx.ModelProto:
    """x -> Conv 3x3 (2 -> 8) -> ReLU -> Conv 3x3 (8 -> 2) = noise; y = x - noise."""
    rng = np.random.default_rng(21)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 2, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (2, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, (2,)).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", *(["b2"] if bias else [])], ["noise"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["x", "noise"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "dncnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_the_residual_sub_is_an_add_of_the_negated_conv(target, bias):
    model = _dncnn(bias)
    done: list = []
    optimized = optimize_float(model, load_target(target), done)
    assert [n.op_type for n in optimized.graph.node] == ["Conv", "Relu", "Conv", "Add"]
    assert [(r.node, r.applied) for r in done if r.rewrite == "sub_as_add"] == [("residual", True)]
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(optimized, {"x": x})[0], run(model, {"x": x})[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("target, device", [("DPUCZDX8G_ISA1_B4096", "DPU"), ("bernoulli2", "BPU")])
def test_dncnn_is_one_accelerator_subgraph_equal_to_ort(target, device):
    model = _dncnn()
    assert npuflow.check(model, target).node("residual").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)


def test_a_target_that_subtracts_keeps_the_sub():
    ops = [n.op_type for n in optimize_float(_dncnn(), load_target("cpu-int8")).graph.node]
    assert ops[-1] == "Sub"


def test_a_sub_of_no_layer_output_is_left_and_check_says_why():
    """``x - relu(conv(x))``: the ReLU's output cannot be negated through the layer; the Sub stays."""
    model = _dncnn()
    model.graph.node[3].input[1] = "r"
    del model.graph.node[2]
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((2, 2, 3, 3), 0.1, np.float32), "w1"))
    done: list = []
    optimized = optimize_float(model, load_target("DPUCZDX8G_ISA1_B4096"), done)
    assert [n.op_type for n in optimized.graph.node][-1] == "Sub"
    assert not [r for r in done if r.rewrite == "sub_as_add"]
    node = npuflow.check(model, "DPUCZDX8G_ISA1_B4096").node("residual")
    assert node.device == "CPU" and "Sub (eltwise_sub) has no DPU implementation" in " ".join(node.reasons)
