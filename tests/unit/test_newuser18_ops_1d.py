"""Round 18 of new-user flows: 1-D pooling and transposed convolution on the accelerator, as 1-D
convolutions already are.

An M5-style raw-waveform classifier (``Conv1d -> BN -> ReLU -> MaxPool1d`` x4, trained on synthetic
instrument tones) had its four ``MaxPool1d`` on the CPU ("only 2-D pooling is lowered"): 4
accelerator subgraphs on DPUCZDX8G_ISA1_B4096 and bernoulli2, 5 on cpu-int8, though its Conv1d
layers run on the accelerator as 2-D convolutions with H = 1.  The float passes now write a pool of a
rank-3 tensor as ``Unsqueeze -> 2-D pool (1 x k) -> Squeeze`` (``passes/ops_1d.py``): 2 subgraphs.
A Conv-TasNet decoder's ``ConvTranspose1d`` (its weight shared by the two sources' decoders) was on
the CPU too ("only 2-D transposed convolutions are lowered"): now a 1 x k transposed convolution.
The same on minimal graphs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.ops_1d import ops_1d_as_2d
from npuflow.passes.optimize import optimize_float
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

DPU = "DPUCZDX8G_ISA1_B4096"
SHAPE = [1, 2, 64]


def _conv_pool_conv(pool: onnx.NodeProto, opset: int = 17) -> onnx.ModelProto:
    """Conv1d (k 5) -> ReLU -> ``pool`` (reads ``r``, writes ``p``) -> Conv1d (k 3)."""
    rng = np.random.default_rng(18)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 2, 5)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), pool,
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2", pads=[1, 1])]
    graph = helper.make_graph(nodes, "m5ish", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


POOLS = {
    "max": helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[4], strides=[4]),
    "max_padded_ceil": helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3], strides=[2],
                                        pads=[1, 1], ceil_mode=1),
    "avg": helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[3], strides=[1], pads=[1, 1],
                            count_include_pad=0),
}


@pytest.mark.parametrize("case", sorted(POOLS))
@pytest.mark.parametrize("opset", [11, 17])
def test_a_1d_pool_is_the_same_2d_pool_on_an_h1_view(case, opset):
    model = _conv_pool_conv(POOLS[case], opset)
    rewritten = ops_1d_as_2d(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", "Unsqueeze", POOLS[case].op_type,
                                                         "Squeeze", "Conv"]
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})[0], run(rewritten, {"x": x})[0])


def test_the_m5_block_is_one_dpu_subgraph_equal_to_ort():
    model = _conv_pool_conv(POOLS["max"])
    assert npuflow.check(model, DPU).node("pool").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, DPU)


def test_a_2d_pool_and_a_pool_with_indices_are_left_alone():
    indices = helper.make_node("MaxPool", ["r"], ["p", "idx"], name="pool", kernel_shape=[4], strides=[4])
    model = _conv_pool_conv(indices)
    assert [n.op_type for n in ops_1d_as_2d(model).graph.node] == ["Conv", "Relu", "MaxPool", "Conv"]


def _decoder(shared: bool) -> onnx.ModelProto:
    """Conv1d encoder (k 8, stride 4) -> ReLU -> two ConvTranspose1d decoders (k 8, stride 4, pads 2,
    output_padding 1), the second reading the first's weight when ``shared`` -> BatchNorm on the first."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (6, 2, 8)).astype(np.float32), "enc"),
             numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 8)).astype(np.float32), "dec"),
             numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 8)).astype(np.float32), "dec2"),
             *[numpy_helper.from_array(v.astype(np.float32), k) for k, v in
               (("g", rng.uniform(0.5, 1.5, 3)), ("b", rng.normal(0, 0.2, 3)), ("m", rng.normal(0, 0.2, 3)),
                ("v", rng.uniform(0.5, 2, 3)))]]
    up = {"strides": [4], "pads": [2, 2], "output_padding": [1]}
    nodes = [helper.make_node("Conv", ["x", "enc"], ["e"], name="encoder", strides=[4], pads=[2, 2]),
             helper.make_node("Relu", ["e"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "dec"], ["d1"], name="decoder1", **up),
             helper.make_node("BatchNormalization", ["d1", "g", "b", "m", "v"], ["y1"], name="bn"),
             helper.make_node("ConvTranspose", ["r", "dec" if shared else "dec2"], ["y2"], name="decoder2", **up)]
    graph = helper.make_graph(nodes, "tasnetish", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("shared", [True, False])
def test_a_1d_transposed_conv_is_a_1xk_one_after_its_batchnorm_folds(shared):
    model = _decoder(shared)
    opt = optimize_float(model)
    ops = [n.op_type for n in opt.graph.node]
    assert "BatchNormalization" not in ops and ops.count("ConvTranspose") == 2
    assert all(len(onnx.numpy_helper.to_array(t).shape) != 3 for t in opt.graph.initializer if t.name != "enc")
    x = np.random.default_rng(2).normal(0, 1, SHAPE).astype(np.float32)
    for a, b in zip(run(model, {"x": x}), run(opt, {"x": x})):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_the_decoder_runs_on_the_dpu_equal_to_ort():
    model = _decoder(shared=True)
    report = npuflow.check(model, DPU)
    assert report.node("decoder1").device == report.node("decoder2").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target=DPU)
    compiled = npuflow.compile(q.model, DPU)
    assert [sg["device"] for sg in compiled.manifest["subgraphs"]] == ["DPU"]
    x = samples(SHAPE, n=1, seed=3)[0]
    got = npuflow.Session(compiled).run({"x": x})
    for name, ref in zip(("y1", "y2"), run(q.model, {"x": x})):
        np.testing.assert_array_equal(got[name], ref)
