"""Nodes sharing one name (newuser round 6: every node of a CNN named ``node``): onnx.checker
passes the model, ``npuflow check`` placed it, ``npuflow quantize`` failed with a traceback
(``KeyError: 'node'`` in the quantizer's plan).  The loader now names the second and later ones
``<name>_<index>``, so quantize and compile run and the quantized model is one ONNX Runtime loads
(it refuses the original: "two nodes with same node name")."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.model import load

rng = np.random.default_rng(0)


def _same_names():
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], "node", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], "node"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], "node", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["y"], "node")]
    graph = helper.make_graph(nodes, "dup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_duplicate_node_names_are_made_unique_and_the_model_quantizes(tmp_path):
    assert [n.name for n in load(_same_names()).graph.node] == ["node", "node_1", "node_2", "node_3"]
    x = rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)
    for target in ("cpu-int8", "DPUCZDX8G_ISA1_B4096"):
        q = npuflow.quantize(_same_names(), [x], target, warn=False)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ref = ort.InferenceSession(q.model.SerializeToString(), opts).run(None, {"x": x})[0]
        path = npuflow.compile(q.model, target).save(tmp_path / f"{target}.npuf")
        assert np.array_equal(npuflow.Session(path).run({"x": x})["y"], ref)
