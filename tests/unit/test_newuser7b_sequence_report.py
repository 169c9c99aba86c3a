"""A sequence tensor on the path (SplitToSequence -> ConcatFromSequence, newuser_flows7b): the
quantizer's per-node report compared every node's first output as an array, and ONNX Runtime
returns a sequence as a list: ``AttributeError: 'list' object has no attribute 'dtype'`` on every
target.  Now the sequence has no cosine row value and the tensors around it are measured."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _sequence_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((2, 4, 3, 3)) * 0.3).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="r1"),
             helper.make_node("SplitToSequence", ["r"], ["seq"], name="s2s", axis=1),
             helper.make_node("ConcatFromSequence", ["seq"], ["cat"], name="cfs", axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_sequence_on_the_path_quantizes_and_reports(target):
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_sequence_model(), samples, target, warn=False)
    rows = {r.node: r for r in q.report.rows}
    assert rows["s2s"].cosine is None and rows["c2"].cosine is not None
    assert q.report.outputs["y"] > 0.99
    out = npuflow.Session(npuflow.compile(q.model, target)).run(samples[0])["y"]
    assert out.shape == (1, 2, 8, 8)
