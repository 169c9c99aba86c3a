"""Round 19 of new-user flows: a 1-D ``mean(-1)`` on the accelerator, as 1-D pooling already is.

An M5-style raw-waveform classifier (round 18) closes with ``x.mean(-1)``, a ``ReduceMean`` over the
last axis of its N x C x L features before the ``Linear``: it ran in float on the CPU on every
target, after the last accelerator subgraph (round 18's open item 2).  The float passes now write it
as ``Unsqueeze -> GlobalAveragePool -> Squeeze`` (``passes/ops_1d.py``), the same mean; a reduction
over another axis, or over the last axis of a 4-D map, stays as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.ops_1d import ops_1d_as_2d
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run

DPU = "DPUCZDX8G_ISA1_B4096"
SHAPE = [1, 2, 64]


def _conv_mean_gemm(axes: list[int], keepdims: int, opset: int = 17) -> onnx.ModelProto:
    """Conv1d (k 5) -> ReLU -> ReduceMean(``axes``) -> Flatten -> Gemm: M5's head."""
    rng = np.random.default_rng(19)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 2, 5)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8 if axes == [-1] else 64)).astype(np.float32), "w2")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        mean = helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="mean", keepdims=keepdims)
    else:
        mean = helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=axes, keepdims=keepdims)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), mean,
             helper.make_node("Flatten", ["m"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "m5head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [11, 17, 18])
def test_a_mean_over_the_last_axis_is_a_global_average_pool_of_an_h1_view(opset, keepdims):
    model = _conv_mean_gemm([-1], keepdims, opset)
    rewritten = ops_1d_as_2d(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu", "Unsqueeze", "GlobalAveragePool", "Squeeze",
                                                         "Flatten", "Gemm"]
    x = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    m = onnx.helper.make_tensor_value_info("m", onnx.TensorProto.FLOAT, None)
    before, after = (run(_with_output(g, m), {"x": x}) for g in (model, rewritten))
    assert before[1].shape == after[1].shape == ((1, 8, 1) if keepdims else (1, 8))
    np.testing.assert_allclose(after[1], before[1], rtol=0, atol=1e-6)  # a sum in another order, nothing else


def _with_output(model: onnx.ModelProto, extra: onnx.ValueInfoProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(extra)
    return out


def test_a_mean_over_channels_is_left_alone():
    model = _conv_mean_gemm([1], 0)
    assert [n.op_type for n in ops_1d_as_2d(model).graph.node] == ["Conv", "Relu", "ReduceMean", "Flatten", "Gemm"]


def test_the_m5_head_is_one_dpu_subgraph_equal_to_ort():
    model = _conv_mean_gemm([-1], 0)
    assert npuflow.check(model, DPU).node("mean").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, DPU)
