"""The forward affine fold on models with dynamic axes (``passes/fold_affine_forward.py``).

A model exported with dynamic batch/width reads its attention's reshape target from the LayerNorm's
output (``Shape``), which a fixed-size load folds into a constant: the fold must treat both alike,
decided from the constants' shapes, ranks and the known sizes only, and refuse where the broadcast
could change the shape.  PP-OCRv4 rec's case: ``tests/models/test_fold_affine_forward_rec.py``.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from npuflow.passes.fold_affine_forward import fold_affine_forward

from .quant_nets import model_from, run

rng = np.random.default_rng(1)


def _f(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _affine_matmul(x_shape, gamma_shape=(6,), shape_reader: bool = False):
    """x -> Sigmoid -> Mul(gamma) -> Add(beta) -> MatMul(W) -> y [and Shape(of the Add) -> s]."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["n"], name="act"),
             helper.make_node("Mul", ["n", "g"], ["m"], name="gamma"),
             helper.make_node("Add", ["m", "be"], ["a"], name="beta"),
             helper.make_node("MatMul", ["a", "w"], ["mm"], name="linear"),
             helper.make_node("Add", ["mm", "bias"], ["y"], name="bias")]
    inits = [_f("g", rng.uniform(0.5, 2, gamma_shape)), _f("be", rng.normal(0, 1, 6)),
             _f("w", rng.normal(0, 1, (6, 4))), _f("bias", rng.normal(0, 1, 4))]
    outputs = [_vi("y", None)]
    if shape_reader:
        nodes.append(helper.make_node("Shape", ["a"], ["s"], name="shape"))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.INT64, None))
    return model_from(nodes, inits, [_vi("x", x_shape)], outputs)


def test_a_shape_reader_of_the_chain_reads_its_source_after_the_fold():
    m = _affine_matmul(["batch", "time", 6], shape_reader=True)
    out = fold_affine_forward(m)
    assert _ops(out) == ["Sigmoid", "MatMul", "Add", "Shape"]
    assert out.graph.node[3].input[0] == "n"
    for t in (3, 7):
        x = rng.normal(0, 1, (2, t, 6)).astype(np.float32)
        (y0, s0), (y1, s1) = run(m, {"x": x}), run(out, {"x": x})
        assert np.array_equal(s0, s1)
        assert np.abs(y0 - y1).max() <= 1e-5 * max(1.0, np.abs(y0).max())


def test_a_size_one_axis_the_constant_broadcasts_up_stays():
    """``x[..., 1] * gamma[6]`` is 6 wide; ``x @ (gamma * W)`` would not be."""
    m = _affine_matmul([2, 5, 1])
    assert _ops(fold_affine_forward(m)) == _ops(m)


def test_a_constant_that_could_add_an_axis_to_an_input_of_unknown_rank_stays():
    """``gamma[1, 6]`` on a rank-1 ``x`` makes the MatMul's output ``[1, 4]``; folded it would be ``[4]``."""
    m = _affine_matmul(None, gamma_shape=(1, 6))
    assert _ops(fold_affine_forward(m)) == _ops(m)
    assert run(m, {"x": rng.normal(0, 1, 6).astype(np.float32)})[0].shape == (1, 4)
