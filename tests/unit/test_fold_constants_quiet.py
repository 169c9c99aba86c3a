"""Constant folding keeps onnxscript's internal notes off the user's terminal: its folder warns of
each multi-output node it leaves ("Skipping constant folding for op Split with multiple outputs"),
which npuflow's own folding then folds (``passes/fold_constants.py``); the corpus run printed it for
every ``SequenceEmpty`` model."""

from __future__ import annotations

import logging

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from npuflow.passes.fold_constants import fold_constants


def test_a_split_of_a_constant_is_folded_without_onnxscripts_warning(caplog):
    c = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "c")
    nodes = [helper.make_node("Split", ["c"], ["a", "b"], axis=0, num_outputs=2),
             helper.make_node("Add", ["a", "x"], ["y1"]), helper.make_node("Add", ["b", "x"], ["y2"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("y1", "y2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outs, [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with caplog.at_level(logging.WARNING):
        folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Add", "Add"]
    assert not [r for r in caplog.records if r.name.startswith("onnxscript")]
    assert logging.getLogger("onnxscript.optimizer._constant_folding").level == logging.NOTSET  # restored
