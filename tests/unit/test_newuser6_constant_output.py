"""A model output that is a constant (an initializer the graph returns, or an ``Identity`` of one,
which the float passes fold to the initializer): the ``.npuf`` compiled, and its loader refused it
with NPF_COMPILE_CORRUPT (``tensor 'k' is not described in tensors``) on every target (newuser
round 6, a streaming audio model returning a constant beside its state).  Now a CPU subgraph
returns the constant, equal to ONNX Runtime's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow

rng = np.random.default_rng(0)


def _model(folded: bool):
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    c = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "c")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["y"], "relu"),
             helper.make_node("Mul", ["y", "c0"], ["y2"], "mul")]  # the constant read by a node too
    c0 = numpy_helper.from_array(np.array(1.0, np.float32), "c0")
    out = "c"
    if not folded:
        nodes.append(helper.make_node("Identity", ["c"], ["k"], "kid"))
        out = "k"
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, 6, 6]),
                               helper.make_tensor_value_info(out, TensorProto.FLOAT, [2])], [w, c, c0])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"])
@pytest.mark.parametrize("folded", [False, True])
def test_constant_output_compiles_loads_and_runs(target, folded, tmp_path):
    model, out = _model(folded)
    x = rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)
    q = npuflow.quantize(model, [x], target, warn=False)
    path = npuflow.compile(q.model, target).save(tmp_path / "m.npuf")
    got = npuflow.Session(path).run({"x": x})
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), opts).run(None, {"x": x})
    assert list(got) == ["y2", out]
    assert np.array_equal(got[out], np.array([1.0, 2.0], np.float32))
    assert np.array_equal(got["y2"], ref[0])


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_unused_input_compiles_loads_and_runs(target, tmp_path):
    """A graph input no node reads (ONNX Runtime still asks for it): the .npuf compiled and its
    loader refused it (``inputs[1]: tensor 'unused' is not described in tensors``)."""
    model, _ = _model(folded=False)
    model.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1, 3]))
    x = rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)
    feeds = {"x": x, "unused": np.zeros((1, 3), np.float32)}
    q = npuflow.quantize(model, [feeds], target, warn=False)
    session = npuflow.Session(npuflow.compile(q.model, target).save(tmp_path / "m.npuf"))
    assert [i.name for i in session.get_inputs()] == ["x", "unused"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), opts).run(None, feeds)
    assert np.array_equal(session.run(feeds)["y2"], ref[0])
