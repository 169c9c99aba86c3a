"""A graph whose nodes are out of topological order, as AMD Quark 0.13's XINT8 configuration
writes it (the Mul rescaling a GlobalAveragePool appended after the last node): ONNX Runtime sorts
and runs it; npuflow refused it with NPF_MODEL_INVALID ("Nodes in a graph must be topologically
sorted") in check, quantize and compile (newuser round 6).  Now the loader sorts the nodes first,
keeping the file's order where it is one; a graph no order fixes is still refused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from npuflow.model import load, sort_nodes

rng = np.random.default_rng(0)


def _unsorted(cycle: bool = False):
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array(0.5, np.float32), "k")
    conv = helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1])
    gap = helper.make_node("GlobalAveragePool", ["r"], ["g0"], "gap")
    mul = helper.make_node("Mul", ["g0", "k"], ["y" if not cycle else "c"], "mul")
    relu = helper.make_node("Relu", ["c"], ["r"], "relu")
    nodes = [relu, gap, conv, mul] if not cycle else [relu, gap, mul]
    graph = helper.make_graph(nodes, "unsorted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y" if not cycle else "g0", TensorProto.FLOAT,
                                                             [1, 4, 1, 1])], [w, k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsorted_graph_is_sorted_and_runs_as_ort_runs_it(tmp_path):
    model = _unsorted()
    assert [n.name for n in load(model).graph.node] == ["conv", "relu", "gap", "mul"]
    x = rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)
    assert npuflow.check(model, "DPUCZDX8G_ISA1_B4096").summary["nodes"] == 4
    q = npuflow.quantize(model, [x], "DPUCZDX8G_ISA1_B4096", warn=False)
    path = npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096").save(tmp_path / "m.npuf")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), opts).run(None, {"x": x})[0]
    assert np.array_equal(npuflow.Session(path).run({"x": x})["y"], ref)


def test_sorted_graph_keeps_its_order_and_a_cycle_is_still_refused():
    model = _unsorted()
    sort_nodes(model.graph)
    order = [n.name for n in model.graph.node]
    sort_nodes(model.graph)
    assert [n.name for n in model.graph.node] == order
    with pytest.raises(NpuflowError) as e:
        load(_unsorted(cycle=True))
    assert e.value.code == "NPF_MODEL_INVALID"
