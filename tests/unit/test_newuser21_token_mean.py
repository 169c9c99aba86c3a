"""Round 21 of new-user flows: the token average before a transformer / MLP head runs on the accelerator.

ResMLP, EfficientFormer's last stage, ViT and MLP-Mixer heads average their N x T x C tokens,
``x.mean(1)``: an exported ``ReduceMean(axes=[1])`` of a rank-3 tensor, which had "no integer
lowering" on every target (ResMLP on cpu-int8: 3 compiled subgraphs, the mean alone in float on
the CPU between two accelerator ones).  The float passes (and ``check``) now write it as
``Unsqueeze(1) -> AveragePool (T x 1) -> Squeeze`` on the N x 1 x T x C view: the same mean
(ResMLP on cpu-int8: 1 subgraph).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.ops_1d import ops_1d_as_2d
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 16, 8]


def _tokens_mean_head(keepdims: int, opset: int = 17, axis: int = 1) -> onnx.ModelProto:
    """MatMul (token-wise Linear 8 -> 12) -> ReLU -> ReduceMean over the tokens -> MatMul 12 -> 5."""
    rng = np.random.default_rng(21)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 12)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (12, 5)).astype(np.float32), "w2")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([axis], np.int64), "axes"))
        mean = helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="mean", keepdims=keepdims)
    else:
        mean = helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[axis], keepdims=keepdims)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["t"], name="fc1"), helper.make_node("Relu", ["t"], ["r"], name="relu"),
             mean, helper.make_node("MatMul", ["m", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "token_mean", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("axis", [1, -2])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [11, 13, 18])
def test_a_mean_over_the_tokens_is_an_average_pool_over_them(opset, keepdims, axis):
    model = _tokens_mean_head(keepdims, opset, axis)
    rewritten = ops_1d_as_2d(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["MatMul", "Relu", "Unsqueeze", "AveragePool", "Squeeze", "MatMul"]
    assert list(rewritten.graph.node[3].attribute[0].ints) == [16, 1]
    x = samples(SHAPE, n=1, seed=2)[0]
    want = run(model, {"x": x})[0]
    got = run(rewritten, {"x": x})[0]
    assert got.shape == want.shape == ((1, 1, 5) if keepdims else (1, 5))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_token_mean_that_arithmetic_reads_back_is_left_alone():
    """``x - x.mean(1, keepdim=True)`` centres the tokens: a statistic, not a pooling."""
    model = _tokens_mean_head(1)
    model.graph.node.insert(3, helper.make_node("Sub", ["r", "m"], ["centred"], name="centre"))
    model.graph.output.append(helper.make_tensor_value_info("centred", onnx.TensorProto.FLOAT, None))
    assert "ReduceMean" in [n.op_type for n in ops_1d_as_2d(model).graph.node]


def test_a_mean_over_an_open_token_count_is_left_alone():
    model = _tokens_mean_head(0)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"
    assert "ReduceMean" in [n.op_type for n in ops_1d_as_2d(model).graph.node]


@pytest.mark.parametrize("target, device", [("DPUCZDX8G_ISA1_B4096", "DPU"), ("cpu-int8", "CPU-INT8"),
                                            ("bernoulli2", "BPU")])
def test_the_token_mean_is_on_the_accelerator_and_equal_to_ort(target, device):
    model = _tokens_mean_head(0)
    assert npuflow.check(model, target).node("mean").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)


def test_a_mean_over_a_conv1d_s_channels_is_not_taken_for_tokens():
    """Conv1d -> ReLU -> mean over axis 1 averages channels (round 19 leaves it): not rewritten."""
    model = _tokens_mean_head(0)
    model.graph.node[0].CopyFrom(helper.make_node("Conv", ["x", "w1c"], ["t"], name="conv1"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((16, 16, 1), np.float32), "w1c"))
    assert "ReduceMean" in [n.op_type for n in ops_1d_as_2d(model).graph.node]
