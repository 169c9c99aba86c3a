"""Folding a constant scale/shift forward into the layer after it (``passes/fold_affine_forward.py``).

The scale folds into any convolution, the shift only where every output reads real input (no
padding, a Gemm, a MatMul with its bias ``Add``); a padded convolution keeps the shift as one
``Add(b / s)``.  Every rewrite keeps the outputs within float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.passes.fold_affine_forward import fold_affine_forward
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target

from .quant_nets import model_from, run

rng = np.random.default_rng(0)


def _f(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _affine_conv(kernel: int, pads: int, group: int, shift_shape=(1,), channels: int = 8):
    """x -> Relu -> Mul(s) -> Add(b) -> Conv(kernel, pads, group) -> y."""
    c = channels
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Mul", ["r", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["b", "m"], ["a"], name="shift"),
             helper.make_node("Conv", ["a", "w", "wb"], ["y"], name="conv", kernel_shape=[kernel] * 2,
                              pads=[pads] * 4, group=group)]
    inits = [_f("s", [0.37]), _f("b", rng.normal(0, 1, shift_shape)),
             _f("w", rng.normal(0, 1, (c, c // group, kernel, kernel))), _f("wb", rng.normal(0, 1, c))]
    return model_from(nodes, inits, [_vi("x", [1, c, 6, 6])], [_vi("y", None)])


def _close(before, after, feeds):
    a, b = run(before, feeds)[0], run(after, feeds)[0]
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())


def _ops(model):
    return [(n.name, n.op_type) for n in model.graph.node]


@pytest.mark.parametrize("shift_shape", [(1,), (1, 8, 1, 1)])
def test_scale_and_shift_fold_into_an_unpadded_conv(shift_shape):
    m = _affine_conv(1, 0, 1, shift_shape)
    out = fold_affine_forward(m)
    assert _ops(out) == [("act", "Relu"), ("conv", "Conv")]
    assert out.graph.node[1].input[0] == "r"
    _close(m, out, {"x": rng.normal(0, 1, (1, 8, 6, 6)).astype(np.float32)})


@pytest.mark.parametrize("group", [1, 8])
def test_padded_conv_keeps_its_shift_as_one_add(group):
    """Zero padding sees 0 where the shifted input would be b: the shift cannot move into the bias."""
    m = _affine_conv(3, 1, group, (1, 8, 1, 1))
    out = fold_affine_forward(m)
    assert _ops(out) == [("act", "Relu"), ("shift", "Add"), ("conv", "Conv")]
    assert "r" in out.graph.node[1].input
    _close(m, out, {"x": rng.normal(0, 1, (1, 8, 6, 6)).astype(np.float32)})


def test_padded_conv_takes_a_lone_scale():
    m = _affine_conv(3, 1, 8)
    del m.graph.node[2]
    m.graph.node[2].input[0] = "m"
    out = fold_affine_forward(m)
    assert _ops(out) == [("act", "Relu"), ("conv", "Conv")]
    _close(m, out, {"x": rng.normal(0, 1, (1, 8, 6, 6)).astype(np.float32)})


def test_chain_with_another_reader_stays():
    m = _affine_conv(1, 0, 1)
    m.graph.node.append(helper.make_node("Relu", ["a"], ["z"], name="other"))
    m.graph.output.append(_vi("z", None))
    assert _ops(fold_affine_forward(m)) == _ops(m)


def _layernorm_matmul(with_bias: bool):
    """x -> Sigmoid -> Mul(gamma) -> Add(beta) -> MatMul(W) [-> Add(bias)] -> y (per last axis)."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["n"], name="act"),
             helper.make_node("Mul", ["n", "g"], ["m"], name="gamma"),
             helper.make_node("Add", ["m", "be"], ["a"], name="beta"),
             helper.make_node("MatMul", ["a", "w"], ["mm" if with_bias else "y"], name="linear")]
    inits = [_f("g", rng.uniform(0.5, 2, 6)), _f("be", rng.normal(0, 1, 6)), _f("w", rng.normal(0, 1, (6, 4)))]
    if with_bias:
        nodes.append(helper.make_node("Add", ["mm", "bias"], ["y"], name="bias"))
        inits.append(_f("bias", rng.normal(0, 1, 4)))
    return model_from(nodes, inits, [_vi("x", [2, 5, 6])], [_vi("y", None)])


def test_matmul_takes_scale_and_shift_into_its_bias_add():
    m = _layernorm_matmul(True)
    out = fold_affine_forward(m)
    assert _ops(out) == [("act", "Sigmoid"), ("linear", "MatMul"), ("bias", "Add")]
    _close(m, out, {"x": rng.normal(0, 1, (2, 5, 6)).astype(np.float32)})


def test_matmul_without_bias_keeps_the_shift():
    m = _layernorm_matmul(False)
    out = fold_affine_forward(m)
    assert _ops(out) == [("act", "Sigmoid"), ("beta", "Add"), ("linear", "MatMul")]
    _close(m, out, {"x": rng.normal(0, 1, (2, 5, 6)).astype(np.float32)})


def test_gemm_with_transposed_weight():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Mul", ["r", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "b"], ["a"], name="shift"),
             helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="fc", transB=1)]
    inits = [_f("s", rng.uniform(0.5, 2, 6)), _f("b", rng.normal(0, 1, 6)), _f("w", rng.normal(0, 1, (4, 6))),
             _f("c", rng.normal(0, 1, 4))]
    m = model_from(nodes, inits, [_vi("x", [3, 6])], [_vi("y", None)])
    out = fold_affine_forward(m)
    assert _ops(out) == [("act", "Relu"), ("fc", "Gemm")]
    _close(m, out, {"x": rng.normal(0, 1, (3, 6)).astype(np.float32)})


def test_a_gelus_half_stays_with_its_table():
    """``Mul(0.5)`` ends the canonical GELU chain the compiler lowers as one table."""
    nodes = [helper.make_node("Div", ["x", "r2"], ["d"], name="div"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="plus"),
             helper.make_node("Mul", ["x", "p"], ["xp"], name="times"),
             helper.make_node("Mul", ["xp", "half"], ["g"], name="half"),
             helper.make_node("MatMul", ["g", "w"], ["y"], name="linear")]
    inits = [_f("r2", 1.4142135), _f("one", 1.0), _f("half", 0.5), _f("w", rng.normal(0, 1, (6, 4)))]
    m = model_from(nodes, inits, [_vi("x", [2, 6])], [_vi("y", None)])
    assert _ops(fold_affine_forward(m)) == _ops(m)


def test_optimize_float_folds_forward_for_an_accelerator_only():
    m = _affine_conv(1, 0, 1)
    assert len(optimize_float(m, load_target("DPUCZDX8G_ISA1_B4096")).graph.node) == 2
    assert len(optimize_float(m, load_target("cpu-int8")).graph.node) == 4
    assert len(optimize_float(m).graph.node) == 4
