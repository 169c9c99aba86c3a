"""A fixed input dimension resized (``--input-shape``) where a node still holds the old size, and
nothing downstream clashes: ``x.view(1, -1)`` traced at batch 1 and read by a Softmax loads at batch 8
and computes one row of all eight samples.  No check fails, so the load warns, naming the node."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npuflow import model as model_module


def _flatten_softmax() -> onnx.ModelProto:
    """``x [1, 4] -> Reshape([1, -1]) -> Softmax``, the output's shape left open."""
    nodes = [helper.make_node("Reshape", ["x", "target"], ["flat"], name="flat"),
             helper.make_node("Softmax", ["flat"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "held", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1, -1], np.int64), "target")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_resized_input_with_a_node_holding_the_old_size_warns(caplog):
    with caplog.at_level(logging.WARNING):
        loaded = model_module.load(_flatten_softmax(), {"x": [8, 4]})
    assert [d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim] == [8, 4]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'flat'" in m and "[1, -1]" in m and "resized from 1x4 to 8x4" in m for m in warned), warned


def test_resizing_nothing_held_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING):
        model_module.load(_flatten_softmax(), {"x": [1, 4]})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "resized" in r.getMessage()]
