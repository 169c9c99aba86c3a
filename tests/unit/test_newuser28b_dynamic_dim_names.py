"""A model whose inputs share their dynamic dimension names (newuser_flows28b: PyPI arabic-name-romanizer's
bi-GRU encoder, ``src`` and ``src_mask`` both ``[batch, src_len]``): quantize without ``--input-shape`` saved
them as ``src_dim0``, ``src_dim1``, ``src_mask_dim0``, ``src_mask_dim1``, and compile's
``NPF_MODEL_DYNAMIC_SHAPE`` named those, dimensions the user's model never had.  A name shared across inputs
now stays; one repeated within an input (paddle2onnx's ``?`` for height and width) still gets its own names."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow.errors import NpuflowError


def _model(x_dims: list, m_dims: list):
    graph = helper.make_graph([helper.make_node("Mul", ["x", "m"], ["p"], name="mask"),
                               helper.make_node("Relu", ["p"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, m_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(shape):
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(0, 1, shape).astype(np.float32), "m": (rng.random(shape) > 0.3).astype(np.float32)}
            for _ in range(4)]


def _dims(model, name):
    inp = next(i for i in model.graph.input if i.name == name)
    return [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]


def test_names_shared_by_inputs_stay_in_the_saved_model_and_the_compile_error():
    q = npuflow.quantize(_model(["batch", "src_len"], ["batch", "src_len"]), _samples((1, 12)), target="cpu-int8",
                         warn=False)
    assert _dims(q.dynamic_model, "x") == ["batch", "src_len"] and _dims(q.dynamic_model, "m") == ["batch", "src_len"]
    with pytest.raises(NpuflowError) as err:
        npuflow.compile(q.dynamic_model, "cpu-int8")
    assert err.value.code == "NPF_MODEL_DYNAMIC_SHAPE" and "(src_len)" in err.value.message
    assert "_dim" not in err.value.message


def test_a_name_repeated_within_one_input_still_gets_its_own_names():
    q = npuflow.quantize(_model([1, "?", "?"], [1, "?", "?"]), _samples((1, 6, 6)), target="cpu-int8", warn=False)
    assert _dims(q.dynamic_model, "x") == [1, "x_dim1", "x_dim2"]
