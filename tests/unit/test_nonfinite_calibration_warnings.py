"""Calibration data that overflows (``Exp -> Exp`` to ``inf``, the 12-op placement seeds 304/620/765):
the quantizer keeps the nodes that write or read the infinite tensor float and says so in one npuflow
warning naming them; no raw numpy ``RuntimeWarning`` (``overflow encountered in matmul``, ``invalid
value encountered in subtract``) reaches the user from the code that already handles such values."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.quant.algorithms.apply import relative_error


def _exp_exp():
    """``Conv -> Exp -> Exp -> Conv``: the second Exp of a conv output of spread ~3 reaches ``inf``."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Exp", ["c"], ["e1"], name="exp1"), helper.make_node("Exp", ["e1"], ["e2"], name="exp2"),
             helper.make_node("Conv", ["e2", "w"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    calib = [{"x": (rng.standard_normal((1, 4, 8, 8)) * 3).astype(np.float32)} for _ in range(4)]
    return model, calib


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_an_overflowing_exp_gives_one_npuflow_warning_and_no_numpy_warning(target, caplog):
    model, calib = _exp_exp()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="npuflow"):
        warnings.simplefilter("always")
        q = npuflow.quantize(model, calib, target)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("npuflow") and r.levelno >= logging.WARNING]
    assert len(ours) == 1, ours
    assert "infinities" in ours[0] and "exp2" in ours[0] and "conv2" in ours[0]
    assert q.report.outputs["y"] is not None  # measured, not lost to a NaN


def test_relative_error_leaves_out_the_float_models_own_infinities():
    """Before, ``inf - inf`` made the error NaN (with a RuntimeWarning), so no candidate compared."""
    ref = np.array([1.0, 2.0, np.inf], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert relative_error([[np.array([1.0, 2.0, np.inf], np.float32)]], [[ref]]) == 0.0
        assert relative_error([[np.array([1.0, 1.0, np.inf], np.float32)]], [[ref]]) == pytest.approx(1 / 5)
        assert relative_error([[np.array([np.inf, 2.0, np.inf], np.float32)]], [[ref]]) == np.inf
