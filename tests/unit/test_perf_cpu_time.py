"""CPU parts timed alone (``perf/cpu_time.py``): a shape operand fed from outside the part gets the
shape its node writes, so the part runs (targets_sweep_s27: PP-OCR rec's attention ``Reshape`` to
``[1, 40, 120]``, its shape made by another CPU part, was "could not be timed alone; counted as 0 ms"
in 3 parts of every rec cell)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from npuflow.perf.cpu_time import measure_ms


def _model(op: str):
    """``x [1, 40, 8, 15]`` -> ``op(x or shape input)`` -> ``y``, the shape operand a graph input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 8, 15])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [None])
    if op == "Reshape":
        node, out = helper.make_node("Reshape", ["x", "s"], ["y"]), [1, 40, 120]
    elif op == "Expand":
        node, out = helper.make_node("Expand", ["x", "s"], ["y"]), [2, 40, 8, 15]
    else:
        node, out = helper.make_node("ConstantOfShape", ["s"], ["y"]), [1, 40, 120]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out)
    inputs = [s] if op == "ConstantOfShape" else [x, s]
    model = helper.make_model(helper.make_graph([node], "g", inputs, [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("op", ["Reshape", "Expand", "ConstantOfShape"])
def test_a_part_whose_shape_operand_comes_from_outside_is_timed(op):
    model = _model(op)
    ms = measure_ms(model, list(model.graph.node), runs=2)
    assert ms is not None and np.isfinite(ms) and ms > 0


def test_a_shape_operand_without_a_static_output_shape_still_reports_none():
    """No declared output shape: nothing to feed but zeros, which this Reshape refuses (reported)."""
    model = _model("Reshape")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    assert measure_ms(model, list(model.graph.node), runs=2) is None
