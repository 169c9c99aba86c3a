"""A ``MatMul`` whose bias is the int32 ``Add`` after it owns that bias's scale under
``learn_threshold``: ONNX Runtime fuses ``DQ -> MatMul -> Add(DQ(int32))`` into one QGemm that reads
the bias codes at ``s_in * s_w``, so a moved weight position has to move the Add's scale with it.
Before 418651d the move rescaled only a layer's own bias input (PP-OCRv4 rec's attention linears read
their biases at 2x and 0.5x); 418651d kept those layers' positions; now the Add's bias is the layer's
(``_linear_addend``) and moves with it (``tests/models/test_learn_threshold_rec_linear.py``), unless
another node reads its scale.  Without the Add's bias as the layer's, the position is kept."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npuflow.quant.algorithms.fast_finetune import _linear_addend, _owns_scales
from npuflow.quant.algorithms.qdq_weights import quantized_layers


def _linear(with_bias: bool) -> onnx.ModelProto:
    """``x -> Q -> DQ -> MatMul(DQ(int8 W)) [-> Add(DQ(int32 b))]``, power-of-two scales."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.float32(2.0 ** -4), "s_x"), numpy_helper.from_array(np.int8(0), "z_x"),
             numpy_helper.from_array(rng.integers(-100, 100, (8, 4)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.float32(2.0 ** -7), "s_w"), numpy_helper.from_array(np.int8(0), "z_w"),
             numpy_helper.from_array(rng.integers(-500, 500, 4).astype(np.int32), "b_q"),
             numpy_helper.from_array(np.float32(2.0 ** -11), "s_b"), numpy_helper.from_array(np.int32(0), "z_b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["x_q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "z_x"], ["x_dq"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "z_w"], ["w"], name="dq_w"),
             helper.make_node("MatMul", ["x_dq", "w"], ["mm"], name="linear")]
    out = "mm"
    if with_bias:
        nodes += [helper.make_node("DequantizeLinear", ["b_q", "s_b", "z_b"], ["b"], name="dq_b"),
                  helper.make_node("Add", ["mm", "b"], ["y"], name="bias")]
        out = "y"
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _layer(model: onnx.ModelProto):
    (ql,) = [q for q in quantized_layers(model) if q.node.op_type == "MatMul"]
    return ql


def test_matmul_owns_the_int32_bias_of_the_add_after_it():
    model = _linear(with_bias=True)
    ql = _layer(model)
    addend = _linear_addend(model, ql)
    assert addend is not None and addend.bias_name == "b_q" and addend.bias_scale == np.float32(2.0 ** -11)
    assert _owns_scales(model, addend)
    assert not _owns_scales(model, ql)  # seen without its Add's bias: that scale would stay behind


def test_matmul_whose_add_bias_scale_is_shared_keeps_its_fix_position():
    model = _linear(with_bias=True)
    model.graph.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.int32), "other_q"))
    model.graph.node.append(helper.make_node("DequantizeLinear", ["other_q", "s_b", "z_b"], ["other"], name="other"))
    assert not _owns_scales(model, _linear_addend(model, _layer(model)))


def test_matmul_without_a_bias_add_may_move_it():
    model = _linear(with_bias=False)
    assert _linear_addend(model, _layer(model)) is None
    assert _owns_scales(model, _layer(model))
