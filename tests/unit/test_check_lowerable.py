"""The checker places by the compiler's own lowering facts (``npuflow/check/lowerable.py``).

Element types: only real-valued (quantizable) tensors go to the accelerator; integer and bool
ops run on the CPU with a reason.  A reason the compiler has for a graph (Resize mode) is the
checker's reason too, word for word.  BatchNormalization folds through a bias Add and into a
grouped ConvTranspose, and a BN no layer absorbs becomes an equal 1x1 depthwise convolution.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow.check.lowerable import LOWERED_OPS
from npuflow.compiler.lowering import LOWERINGS
from npuflow.passes.fold_batchnorm import batchnorm_to_depthwise, fold_batchnorm
from npuflow.passes.optimize import optimize_float
from tests import onnx_builders as B

from .quant_nets import model_from, run

DPU = "DPUCZDX8G_ISA1_B4096"
rng = np.random.default_rng(0)


def test_the_checker_knows_every_op_the_compiler_lowers():
    assert LOWERED_OPS == set(LOWERINGS)  # the lookup-table ops are one set, check/lowerable.TABLE_OPS


def test_data_movement_fed_from_the_cpu_runs_on_the_cpu():
    """PP-OCRv4 rec's attention: reshape/transpose after a CPU op, feeding DPU work."""
    conv, w = B.conv_node("conv", "s", "c", 4, 4)
    nodes = [helper.make_node("Sigmoid", ["x"], ["g"], name="sig"),  # no DPU sigmoid
             helper.make_node("Transpose", ["g"], ["t"], name="tr", perm=[0, 1, 3, 2]),
             helper.make_node("Relu", ["t"], ["s"], name="relu"), conv]
    r = npuflow.check(B.model(nodes, [B.vi("x", [1, 4, 8, 8])], [B.vi("c", None)], [w]), DPU)
    assert [r.node(n).device for n in ("sig", "tr", "relu", "conv")] == ["CPU", "CPU", "CPU", "NPU"]
    assert "comes from the CPU in float" in r.node("tr").reasons[-1]


def _typed_ops_model():
    """A conv whose output is cast to int16 (Add), uint64 (Concat) and bool (Concat)."""
    conv, w = B.conv_node("conv", "x", "c", 4, 4)
    nodes = [conv]
    outs = []
    for k, (et, op) in enumerate(((TensorProto.INT16, "Add"), (TensorProto.UINT64, "Concat"),
                                  (TensorProto.BOOL, "Concat"))):
        nodes.append(helper.make_node("Cast", ["c"], [f"i{k}"], to=et, name=f"cast{k}"))
        extra = {"axis": 1} if op == "Concat" else {}
        nodes.append(helper.make_node(op, [f"i{k}", f"i{k}"], [f"o{k}"], name=f"op{k}", **extra))
        outs.append(helper.make_tensor_value_info(f"o{k}", et, None))
    return B.model(nodes, [B.vi("x", [1, 4, 8, 8])], outs, [w])


@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
def test_integer_and_bool_ops_run_on_the_cpu(target):
    r = npuflow.check(_typed_ops_model(), target)
    assert r.node("conv").device == "NPU"
    for k, kind in enumerate(("int16", "uint64", "bool")):
        node = r.node(f"op{k}")
        assert node.device == "CPU", (node.name, node.reasons)
        assert any(f"computes on {kind} tensor" in reason for reason in node.reasons), node.reasons


def test_compiler_reason_is_the_checker_reason():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], name="up", mode="linear",
                              coordinate_transformation_mode="align_corners")]  # no ConvTranspose form
    # bernoulli2: a 2-D align_corners resize has no MatMul form there either (the BPU has no transpose)
    inits = [B.weight("w", (4, 4, 3, 3)), B.const("scales", np.array([1, 1, 2, 2], np.float32))]
    m = model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])])
    q = npuflow.quantize(m, [{"x": rng.normal(0, 1, (1, 4, 6, 6)).astype(np.float32)}], target="bernoulli2").model
    reason = ("Resize mode 'linear' is not lowered as a Resize (no depthwise ConvTranspose form: "
              "scales [1, 1, 2, 2] with coordinate_transformation_mode 'align_corners'; only n -> (n - 1) s + 1 "
              "(s = 2, 4, 8) samples a fixed kernel)")
    up = npuflow.check(q, "bernoulli2").node("up")
    assert up.device == "CPU" and reason in up.reasons
    assert any(note.startswith("up ") and reason in note for note in npuflow.compile(q, "bernoulli2").manifest["notes"])


def _bn(name, x, y, c):
    inits = [B.const(f"{name}_g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
             B.const(f"{name}_b", rng.normal(0, 0.3, c).astype(np.float32)),
             B.const(f"{name}_m", rng.normal(0, 0.3, c).astype(np.float32)),
             B.const(f"{name}_v", rng.uniform(0.5, 2, c).astype(np.float32))]
    return helper.make_node("BatchNormalization", [x, *(t.name for t in inits)], [y], name=name), inits


def _same_outputs(a, b, shape):
    x = rng.normal(0, 1, shape).astype(np.float32)
    ra, rb = run(a, {"x": x})[0], run(b, {"x": x})[0]
    assert np.abs(ra - rb).max() <= 1e-5 * max(1.0, np.abs(ra).max())


def test_batchnorm_folds_into_grouped_conv_transpose():
    ct = helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], name="up", group=2, strides=[2, 2])
    bn, bn_inits = _bn("bn", "t", "y", 6)
    m = model_from([ct, bn], [B.weight("w", (4, 3, 2, 2)), B.const("b", rng.normal(0, 1, 6).astype(np.float32)),
                              *bn_inits],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10, 10])])
    folded = fold_batchnorm(m)
    assert [n.op_type for n in folded.graph.node] == ["ConvTranspose"]
    _same_outputs(m, folded, [1, 4, 5, 5])


def test_batchnorm_after_a_bias_add_folds():
    """PP-OCRv4 det: ConvTranspose -> Add(bias) -> BN, which compile could not lower."""
    ct = helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="up", strides=[2, 2])
    add = helper.make_node("Add", ["t", "b"], ["a"], name="bias")
    bn, bn_inits = _bn("bn", "a", "y", 3)
    m = model_from([ct, add, bn], [B.weight("w", (4, 3, 2, 2)), B.const("b", np.ones((1, 3, 1, 1), np.float32)),
                                   *bn_inits],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])])
    opt = optimize_float(m)
    assert [n.op_type for n in opt.graph.node] == ["ConvTranspose"]
    _same_outputs(m, opt, [1, 4, 5, 5])


@pytest.mark.parametrize("shape", [[1, 3, 6, 6], [1, 3, 10]])
def test_standalone_batchnorm_becomes_a_depthwise_conv(shape):
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    bn, bn_inits = _bn("bn", "r", "y", 3)
    m = model_from([relu, bn], bn_inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    dw = batchnorm_to_depthwise(fold_batchnorm(m))
    conv = dw.graph.node[1]
    assert (conv.op_type, conv.name, conv.output[0]) == ("Conv", "bn", "y")
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == 3
    _same_outputs(m, dw, shape)
    r = npuflow.check(m, DPU)
    assert (r.node("bn").device, r.node("bn").op_kind) == ("NPU", "depthwise_conv2d")


def test_int4_weights_run_on_the_cpu_in_check_and_compile():
    """A quantize step of a type integer programs do not compute in (int4) is a graph fact both see."""
    w = helper.make_tensor("w_q", TensorProto.INT4, [4, 4, 1, 1], rng.integers(-8, 8, 16).tolist())
    inits = [w, B.const("s", np.float32(0.0625)), B.const("z", np.int8(0)), B.const("ws", np.float32(0.125)),
             helper.make_tensor("wz", TensorProto.INT4, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="xd"),
             helper.make_node("DequantizeLinear", ["w_q", "ws", "wz"], ["w"], name="w_dq"),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="cq"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"], name="cd")]
    m = model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], opset=21)
    reason = "DequantizeLinear 'w_dq' works on int4 tensors, which integer programs do not compute in"
    conv = npuflow.check(m, DPU).node("conv")
    assert conv.device == "CPU" and reason in conv.reasons
    assert any(note.startswith("conv ") and reason in note for note in npuflow.compile(m, DPU).manifest["notes"])
