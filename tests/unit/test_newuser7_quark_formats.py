"""AMD Quark's non-integer formats (BFP16, BF16, MX) are named as such, not as unregistered custom ops.

New-user round 7a: a Quark ``BFP16_QCONFIG`` or ``BF16_QCONFIG`` model given to ``npuflow check`` /
``compile`` was refused with ``NPF_MODEL_CUSTOM_OP`` and the hint to register
``BFPQuantizeDequantize`` as a custom op, which cannot help: no target runs block floating point.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError


def _model(op_type: str, zp: np.ndarray | None = None, domain: str = "com.amd.quark") -> onnx.ModelProto:
    """x -> (one Quark op) -> Relu -> y."""
    inits, inputs = [], ["x"]
    if zp is not None:
        inits = [numpy_helper.from_array(np.array([1.0], np.float32), "s"), numpy_helper.from_array(zp, "zp")]
        inputs = ["x", "s", "zp"]
    nodes = [helper.make_node(op_type, inputs, ["q"], name="quark_q", domain=domain),
             helper.make_node("Relu", ["q"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])


def test_bfp16_named_as_quark_format() -> None:
    with pytest.raises(NpuflowError) as e:
        npuflow.check(_model("BFPQuantizeDequantize"), "cpu-int8")
    assert e.value.code == "NPF_MODEL_QUARK_FORMAT"
    assert "block floating point" in str(e.value) and "quark_q" in str(e.value)
    assert "XINT8_QCONFIG" in e.value.hint and "register_op" not in e.value.hint


def test_bf16_extended_qdq_names_its_type() -> None:
    zp = numpy_helper.from_array(np.zeros(1, np.float32), "zp")
    zp.data_type = TensorProto.BFLOAT16
    model = _model("ExtendedQuantizeLinear", np.zeros(1, np.float32))
    model.graph.initializer[1].CopyFrom(zp)
    with pytest.raises(NpuflowError) as e:
        npuflow.compile(model, "DPUCZDX8G_ISA1_B4096")
    assert e.value.code == "NPF_MODEL_QUARK_FORMAT" and "(bfloat16)" in str(e.value)


def test_other_custom_ops_unchanged() -> None:
    with pytest.raises(NpuflowError) as e:
        npuflow.check(_model("MyOp", domain="com.example"), "cpu-int8")
    assert e.value.code == "NPF_MODEL_CUSTOM_OP"
