"""A model with custom operators (domains ONNX Runtime does not implement) is refused by every
stage with one coded error naming each custom op and its nodes, not the checker's first
"not a registered function/op"."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.cli.app import main
from npuflow.errors import NpuflowError


def _custom_model(tmp_path) -> str:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("MySwish", ["c1"], ["s1"], domain="com.example", name="swish1", beta=1.5),
        helper.make_node("MySwish", ["s1"], ["s2"], domain="com.example", name="swish2", beta=1.5),
        helper.make_node("PillarScatter", ["s2"], ["p"], domain="com.example", name="scatter"),
        helper.make_node("Conv", ["p", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    return str(path)


def test_every_custom_op_is_named_in_one_coded_error(tmp_path):
    path = _custom_model(tmp_path)
    for stage in (lambda: npuflow.check(path, "DPUCZDX8G_ISA1_B4096"),
                  lambda: npuflow.quantize(path, [np.zeros((1, 3, 8, 8), np.float32)], "cpu-int8")):
        with pytest.raises(NpuflowError) as err:
            stage()
        assert err.value.code == "NPF_MODEL_CUSTOM_OP"
        assert "com.example:MySwish (node swish1, swish2)" in err.value.message
        assert "com.example:PillarScatter (node scatter)" in err.value.message


def test_cli_prints_the_code_and_the_way_out(tmp_path, capsys):
    assert main(["check", _custom_model(tmp_path), "-t", "DPUCZDX8G_ISA1_B4096", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ERROR [NPF_MODEL_CUSTOM_OP]" in err and "onnx.utils.extract_model" in err and "Traceback" not in err


def test_model_local_functions_are_not_custom_ops(tmp_path):
    """npuflow's own quantized models call model-local functions of the ai.npuflow domain."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    fn = helper.make_function("my.local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Twice", ["x"], ["y"], domain="my.local")], "g", [x], [y])
    model = helper.make_model(graph, functions=[fn],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.local", 1)])
    npuflow.model.validate(model)
