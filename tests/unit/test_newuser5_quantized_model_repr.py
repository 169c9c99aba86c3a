"""``QuantizedModel`` printed in a notebook (newuser round 5).  Before, the generated dataclass repr
printed every field (the requantizer's plan, quant_info, each tensor's parameters): 203 KB for the
MNIST CNN, several KB for a two-node model.  Now one line: target, graph, sizes, output cosines and
the accuracy check's code."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import npuflow

rng = np.random.default_rng(0)


def _conv_relu():
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], "relu")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_repr_is_one_short_line():
    calib = [rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32) for _ in range(4)]
    q = npuflow.quantize(_conv_relu(), calib, "cpu-int8")
    text = repr(q)
    assert len(text) < 300 and "\n" not in text, len(text)
    assert text.startswith("QuantizedModel(target='cpu-int8', graph='tiny', nodes=")
    assert f"'y': {q.report.outputs['y']:.6f}" in text and "problem=None" in text
    assert str(q) == text


def test_check_report_repr_is_one_short_line():
    """``npuflow.check(...)`` in a notebook cell printed the model and every node (15 KB for the
    MNIST CNN, 7.9 KB for a five-node model); now the summary on one line."""
    report = npuflow.check(_conv_relu(), "cpu-int8")
    text = repr(report)
    assert len(text) < 300 and "\n" not in text, len(text)
    assert text.startswith("CheckReport(target='cpu-int8', graph=") and "nodes=2" in text and "npu_subgraphs=1" in text


def test_with_precisions_on_a_model_without_a_plan_is_a_coded_error():
    """A QAT model (its requantizer dropped) raised a bare ValueError."""
    import dataclasses

    import pytest

    from npuflow.errors import NpuflowError

    calib = [rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32) for _ in range(4)]
    q = dataclasses.replace(npuflow.quantize(_conv_relu(), calib, "cpu-int8"), requantizer=None)
    with pytest.raises(NpuflowError) as err:
        q.with_precisions({})
    assert err.value.code == "NPF_QUANT_NO_PLAN" and "with_precisions" in str(err.value)
