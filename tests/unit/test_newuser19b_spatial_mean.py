"""Round 19b of new-user flows: a classifier's ``x.mean((2, 3))`` runs on the accelerator.

A torch classifier that closes with ``self.fc(x.mean((2, 3)))`` (round 19b's coordinate-attention,
MixConv/BiFPN and FiLM keyword-spotter nets) exports ``ReduceMean(axes=[2, 3], keepdims=0)`` of an
N x C x H x W map, which had "no integer lowering" on every target: a float CPU subgraph between
the last accelerator subgraph and the head (cpu-int8: 3 compiled subgraphs instead of 1).  The
float passes (and ``check``) now write it as ``GlobalAveragePool`` (``-> Squeeze`` for ``keepdims``
0), the same mean; a mean over channels, or one that element-wise arithmetic reads back (a
normalisation's statistic), stays as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.ops_1d import ops_1d_as_2d
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 12, 12]


def _conv_mean_gemm(axes: list[int], keepdims: int, opset: int = 17) -> onnx.ModelProto:
    """Conv 3x3 -> ReLU -> ReduceMean(``axes``) -> Flatten -> Gemm: a classifier's head."""
    rng = np.random.default_rng(195)
    features = {(2, 3): 8, (-2, -1): 8, (1,): 144, (3,): 96}[tuple(axes)]
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, features)).astype(np.float32), "w2")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        mean = helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="mean", keepdims=keepdims)
    else:
        mean = helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=axes, keepdims=keepdims)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), mean,
             helper.make_node("Flatten", ["m"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("m", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("axes", [[2, 3], [-2, -1]])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [11, 17, 18])
def test_a_spatial_mean_is_a_global_average_pool(opset, keepdims, axes):
    model = _conv_mean_gemm(axes, keepdims, opset)
    rewritten = ops_1d_as_2d(model)
    ops = ["GlobalAveragePool"] + ([] if keepdims else ["Squeeze"])
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", *ops, "Flatten", "Gemm"]
    x = samples(SHAPE, n=1, seed=2)[0]
    before, after = run(model, {"x": x}), run(rewritten, {"x": x})
    assert after[1].shape == before[1].shape == ((1, 8, 1, 1) if keepdims else (1, 8))
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # a sum in another order, nothing else


def test_a_mean_over_channels_is_left_alone():
    """(A mean over one spatial axis became a window ``AveragePool`` in round 20: test_newuser20_axis_mean.py.)"""
    model = _conv_mean_gemm([1], 0)
    assert [n.op_type for n in ops_1d_as_2d(model).graph.node] == ["Conv", "Relu", "ReduceMean", "Flatten", "Gemm"]


def test_a_mean_that_arithmetic_reads_back_is_left_alone():
    """A normalisation's statistic (``x - x.mean((2, 3), keepdim=True)``) is no pooling; it stays for the
    variance pass (``tests/unit/test_layernorm_variance_forms.py``: the rank-3 LayerNorm case)."""
    model = _conv_mean_gemm([2, 3], 1)
    centred = helper.make_node("Sub", ["r", "m"], ["centred"], name="centre")
    model.graph.node.insert(3, centred)
    model.graph.output.append(helper.make_tensor_value_info("centred", onnx.TensorProto.FLOAT, None))
    assert "ReduceMean" in [n.op_type for n in ops_1d_as_2d(model).graph.node]


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8"])
def test_the_classifier_head_is_one_accelerator_subgraph_equal_to_ort(target):
    model = _conv_mean_gemm([2, 3], 0)
    assert npuflow.check(model, target).node("mean").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target=target)
    compiled = npuflow.compile(q.model, target)
    assert len(compiled.manifest["subgraphs"]) == 1 and compiled.manifest["subgraphs"][0]["device"] != "CPU"
    x = samples(SHAPE, n=1, seed=3)[0]
    assert max(compare_layerwise_with_ort(q.model, {"x": x}, target).values()) <= (0 if target.startswith("DPU") else 1)
    np.testing.assert_array_equal(npuflow.Session(compiled).run({"x": x})["y"], run(q.model, {"x": x})[0])
