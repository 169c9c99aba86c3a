"""``npuflow quantize`` of a model that is already quantized is refused with its own code.

New-user round 7a: a Quark A8W8 model given to ``npuflow quantize -t DPUCZDX8G_ISA1_B4096`` wrote a
quantized_model.onnx with npuflow's steps stacked on Quark's, which ``compile`` refused as
``NPF_MODEL_DUPLICATE_NAME`` ("the exporter is faulty"); an ONNX Runtime ``quantize_dynamic`` model
failed at export with ``NPF_MODEL_INVALID`` (a duplicate ``..._scale`` initializer).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError

RNG = np.random.default_rng(0)
CALIB = [{"x": RNG.standard_normal((1, 4)).astype(np.float32)} for _ in range(4)]


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _float() -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                   helper.make_node("Relu", ["m"], ["y"], name="relu")], [w])


def _qdq() -> onnx.ModelProto:
    """x -> Q/DQ (float scale, as ONNX Runtime or Quark A8W8 write it) -> MatMul -> Relu."""
    m = _float()
    m.graph.initializer.extend([numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                                numpy_helper.from_array(np.array(0, np.int8), "z")])
    qdq = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_q"),
           helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x_dq")]
    m.graph.node[0].input[0] = "xd"
    nodes = qdq + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _dynamic() -> onnx.ModelProto:
    """ONNX Runtime's quantize_dynamic form: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul."""
    w = numpy_helper.from_array(RNG.integers(-5, 5, (4, 4)).astype(np.int8), "wq")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="x_QuantizeLinear"),
             helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["acc"], name="mm"),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["accf", "xs"], ["y"], name="mul")]
    return _model(nodes, [w])


@pytest.mark.parametrize("build, first", [(_qdq, "x_q"), (_dynamic, "x_QuantizeLinear")])
def test_quantized_models_refused(build, first) -> None:
    with pytest.raises(NpuflowError) as e:
        npuflow.quantize(build(), CALIB, "DPUCZDX8G_ISA1_B4096")
    assert e.value.code == "NPF_QUANT_ALREADY_QUANTIZED" and repr(first) in str(e.value)
    assert "npuflow compile" in e.value.hint


def test_float_model_still_quantizes() -> None:
    q = npuflow.quantize(_float(), CALIB, "DPUCZDX8G_ISA1_B4096")
    assert any(n.op_type == "DequantizeLinear" for n in q.model.graph.node)
