"""Float passes: BN folding, Identity/Dropout removal, activation patterns, target legalisation.

Each pass keeps results within 1e-5 relative and keeps node names.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.passes.activations import fuse_activation_patterns
from npuflow.passes.fold_batchnorm import fold_batchnorm
from npuflow.passes.optimize import optimize_float
from npuflow.passes.remove_identity import remove_identity
from npuflow.quant.legalize import DPU_HSIGMOID_SCALE, legalize
from npuflow.targets import load_target

from .quant_nets import model_from, run

rng = np.random.default_rng(0)


def _f(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _bn(name, x, y, c):
    inits = [_f(f"{name}_g", rng.uniform(0.5, 1.5, c)), _f(f"{name}_b", rng.normal(0, 0.3, c)),
             _f(f"{name}_m", rng.normal(0, 0.3, c)), _f(f"{name}_v", rng.uniform(0.5, 2, c))]
    node = helper.make_node("BatchNormalization", [x, *(t.name for t in inits)], [y], name=name, epsilon=1e-3)
    return node, inits


def _close(a, b, model_a, model_b, feeds):
    ra, rb = run(model_a, feeds)[0], run(model_b, feeds)[0]
    assert np.abs(ra - rb).max() <= 1e-5 * max(1.0, np.abs(ra).max())


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose", "Gemm"])
def test_batchnorm_folds_into_producer(op):
    if op == "Gemm":
        nodes = [helper.make_node("Gemm", ["x", "w"], ["t"], name="prod", transB=1, beta=0.5)]
        inits = [_f("w", rng.normal(0, 1, (4, 6)))]
        xin, shape, c = [1, 6], [1, 4], 4
    else:
        wshape = (4, 3, 3, 3) if op == "Conv" else (3, 4, 3, 3)
        nodes = [helper.make_node(op, ["x", "w", "b"], ["t"], name="prod")]
        inits = [_f("w", rng.normal(0, 1, wshape)), _f("b", rng.normal(0, 1, 4))]
        xin, c = [1, 3, 5, 5], 4
        shape = [1, 4, 3, 3] if op == "Conv" else [1, 4, 7, 7]
    bn, bn_inits = _bn("bn", "t", "y", c)
    m = model_from(nodes + [bn], inits + bn_inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, xin)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    folded = fold_batchnorm(m)
    assert [n.op_type for n in folded.graph.node] == [op] and folded.graph.node[0].name == "prod"
    assert folded.graph.node[0].output[0] == "y"
    x = rng.normal(0, 1, xin).astype(np.float32)
    _close(None, None, m, folded, {"x": x})


def test_batchnorm_kept_when_conv_output_is_shared():
    conv = helper.make_node("Conv", ["x", "w"], ["t"], name="conv")
    bn, bn_inits = _bn("bn", "t", "y", 2)
    add = helper.make_node("Add", ["y", "t"], ["z"], name="add")
    m = model_from([conv, bn, add], [_f("w", rng.normal(0, 1, (2, 1, 1, 1)))] + bn_inits,
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2, 2])])
    assert [n.op_type for n in fold_batchnorm(m).graph.node] == ["Conv", "BatchNormalization", "Add"]


def test_identity_and_dropout_removed_output_names_kept():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Identity", ["a"], ["b"], name="id"),
             helper.make_node("Dropout", ["b"], ["c"], name="drop"),
             helper.make_node("Sigmoid", ["c"], ["d"], name="sig"),
             helper.make_node("Identity", ["d"], ["y"], name="id_out")]
    m = model_from(nodes, [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    out = remove_identity(m)
    assert [n.name for n in out.graph.node] == ["relu", "sig"]
    assert out.graph.node[1].input[0] == "a" and out.graph.node[1].output[0] == "y"
    _close(None, None, m, out, {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)})


def _decomposed(kind: str, opset: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add3"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="relu6")]
    if kind == "hsig":
        nodes.append(helper.make_node("Div", ["c", "six"], ["y"], name="div6"))
    else:
        nodes += [helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
                  helper.make_node("Div", ["m", "six"], ["y"], name="div6")]
    inits = [_f("three", 3.0), _f("zero", 0.0), _f("six", 6.0)]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], opset=opset)


@pytest.mark.parametrize("kind, opset, ops", [("hsig", 13, ["HardSigmoid"]), ("hswish", 14, ["HardSwish"]),
                                              ("hswish", 13, ["HardSigmoid", "Mul"])])
def test_decomposed_hard_activations_become_one_form(kind, opset, ops):
    m = _decomposed(kind, opset)
    out = fuse_activation_patterns(m)
    assert [n.op_type for n in out.graph.node] == ops
    assert out.graph.node[-1].name == "div6" and out.graph.node[-1].output[0] == "y"
    x = np.linspace(-5, 5, 64, dtype=np.float32).reshape(1, 64)
    _close(None, None, m, out, {"x": x})
    _close(None, None, m, optimize_float(m), {"x": x})


def test_dpu_legalisation_of_hard_sigmoid_swish_and_leaky_relu():
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="hs", alpha=1 / 6, beta=0.5),
             helper.make_node("HardSwish", ["h"], ["w"], name="hw"),
             helper.make_node("LeakyRelu", ["w"], ["y"], name="lr", alpha=0.1)]
    m = model_from(nodes, [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], opset=14)
    dpu = legalize(m, load_target("DPUCZDX8G_ISA1_B4096"))
    names = [(n.name, n.op_type) for n in dpu.graph.node]
    assert names == [("hs/add", "Add"), ("hs/clip", "Clip"), ("hs", "Mul"),
                     ("hw/add", "Add"), ("hw/clip", "Clip"), ("hw/hsig", "Mul"), ("hw", "Mul"), ("lr", "LeakyRelu")]
    x = np.linspace(-6, 6, 64, dtype=np.float32).reshape(1, 64)
    h = np.clip(x + 3, 0, 6) * np.float32(DPU_HSIGMOID_SCALE)
    w = h * (np.clip(h + 3, 0, 6) * np.float32(DPU_HSIGMOID_SCALE))
    expected = np.where(w >= 0, w, w * np.float32(26 / 256))
    np.testing.assert_allclose(run(dpu, {"x": x})[0], expected, rtol=1e-6, atol=1e-7)
    cpu = legalize(m, load_target("cpu-int8"))
    assert [n.op_type for n in cpu.graph.node] == ["HardSigmoid", "HardSwish", "LeakyRelu"]


def test_constant_scale_and_shift_fold_into_conv():
    from npuflow.passes.fold_affine import fold_affine

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["s", "c"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "b"], ["a"], name="shift"),
             helper.make_node("Sub", ["a", "b"], ["y"], name="unshift")]
    inits = [_f("w", rng.normal(0, 1, (4, 3, 3, 3))), _f("s", [1.384]), _f("b", rng.normal(0, 1, (1, 4, 1, 1)))]
    m = model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])])
    out = fold_affine(m)
    assert [(n.name, n.op_type, n.output[0]) for n in out.graph.node] == [("conv", "Conv", "y")]
    _close(None, None, m, out, {"x": rng.normal(0, 1, (1, 3, 5, 5)).astype(np.float32)})
