"""A MaxPool with an indices output: its values on the accelerator (session 33, newops item 4).

ENet keeps ``max_pool2d(return_indices=True)``'s indices for ``max_unpool2d``; the two-output
``MaxPool`` computed int64 and ran whole on the CPU, its pooled values (read by the next conv) with it
(round 23a).  ``passes/maxpool_indices.py`` splits it: a plain ``MaxPool`` for the values (name kept)
and ``NAME/indices`` for the indices alone, which stays on the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.maxpool_indices import maxpool_indices_apart
from tests.qdq_builder import ort_values
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 8, 8]


def _pool_net(read_values: bool = True) -> onnx.ModelProto:
    """Conv -> MaxPool 2x2 (values, indices) -> Conv -> y; the indices are the second graph output."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p" if read_values else "c", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
               helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, None)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_two_pools_compute_the_values_and_indices_of_the_one():
    model = _pool_net()
    out = maxpool_indices_apart(model)
    assert [(n.name, n.op_type, len(n.output)) for n in out.graph.node] == [
        ("conv", "Conv", 1), ("pool", "MaxPool", 1), ("pool/indices", "MaxPool", 2), ("conv2", "Conv", 1)]
    x = samples(SHAPE, n=1, seed=1)[0]
    for got, want in zip(run(out, {"x": x}), run(model, {"x": x})):
        np.testing.assert_array_equal(got, want)


def test_a_pool_whose_values_nobody_reads_is_left():
    assert [n.name for n in maxpool_indices_apart(_pool_net(read_values=False)).graph.node] == ["conv", "pool", "conv2"]


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8"])
def test_the_values_run_on_the_accelerator_and_the_indices_on_the_cpu(target):
    report = npuflow.check(_pool_net(), target)
    assert [report.node(n).device for n in ("conv", "pool", "conv2")] == ["NPU"] * 3
    assert report.node("conv2").subgraph == report.node("conv").subgraph
    indices = report.node("pool/indices")
    assert indices.device == "CPU" and "int64" in indices.reasons[0]


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8"])
def test_one_accelerator_subgraph_equal_to_ort_on_both_outputs(target):
    q = npuflow.quantize(_pool_net(), samples(SHAPE, n=8), target=target, warn=False)
    compiled = npuflow.compile(q.model, target)
    assert sum(sg.on_accelerator for sg in compiled.subgraphs) == 1
    x = {"x": samples(SHAPE, n=1, seed=3)[0]}
    got = npuflow.Session(compiled).run(x)
    want = ort_values(q.model, x, ["y", "idx"])
    for name in ("y", "idx"):
        np.testing.assert_array_equal(got[name], want[name])
