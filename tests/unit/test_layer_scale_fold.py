"""Layer scales on tokens fold into the linear layer before them (round 21 of new-user flows, Open 2).

ConvNeXt, CaiT, DeiT-III and ResMLP scale a linear layer's output per channel, ``gamma * fc(x)``,
exported as ``MatMul -> Add(B) -> Mul(gamma)`` on N x T x C tokens; ResMLP's ``Affine`` adds a
shift too.  No target runs a constant ``Mul``/``Add`` on tokens ("mul_const has no DPU
implementation"), and ``fold_affine`` folded only into ``Conv``/``ConvTranspose``/``Gemm``: ResMLP
was 35 compiled subgraphs on DPUCZDX8G.  ``fold_linear_affine`` (a float pass check runs too) now
writes ``W' = W * gamma`` per column and ``B' = B * gamma + b``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 16, 8]


def _scaled_linear(after: list[tuple[str, np.ndarray]], bias: bool = True) -> onnx.ModelProto:
    """x (tokens 16 x 8) -> MatMul 8 -> 12 [-> Add(B)] -> the constant ops ``after`` in order -> ReLU -> y."""
    rng = np.random.default_rng(31)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 12)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.2, (12,)).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t0"], name="fc")]
    if bias:
        nodes.append(helper.make_node("Add", ["t0", "b"], ["t1"], name="fc_bias"))
    for k, (op, value) in enumerate(after):
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"c{k}"))
        nodes.append(helper.make_node(op, [nodes[-1].output[0], f"c{k}"], [f"a{k}"], name=f"{op.lower()}{k}"))
    nodes.append(helper.make_node("Relu", [nodes[-1].output[0]], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "layer_scale", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


GAMMA = np.linspace(0.05, 0.6, 12)
CASES = {
    "gamma": [("Mul", GAMMA)],
    "affine": [("Mul", GAMMA), ("Add", np.linspace(-0.3, 0.3, 12))],
    "div_sub": [("Div", GAMMA.reshape(1, 1, 12)), ("Sub", np.full((1,), 0.1))],
    "scalar": [("Mul", np.array(0.25))],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_constant_per_channel_op_after_a_linear_layer_folds_into_it(case):
    model = _scaled_linear(CASES[case])
    optimized = optimize_float(model, load_target("DPUCZDX8G_ISA1_B4096"))
    assert [n.op_type for n in optimized.graph.node] == ["MatMul", "Add", "Relu"]
    x = samples(SHAPE, n=1, seed=2)[0]
    want = run(model, {"x": x})[0]
    np.testing.assert_allclose(run(optimized, {"x": x})[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_scale_after_a_matmul_without_bias_folds_and_its_add_stays_the_bias():
    model = _scaled_linear([("Mul", GAMMA), ("Add", np.linspace(-0.3, 0.3, 12))], bias=False)
    optimized = optimize_float(model, load_target("bernoulli2"))
    assert [n.op_type for n in optimized.graph.node] == ["MatMul", "Add", "Relu"]
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(optimized, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [np.linspace(0.5, 1.5, 16).reshape(16, 1),  # per token, not per channel
                                   np.full((1, 1, 1, 12), 0.5)])  # adds an axis
def test_a_constant_that_is_not_one_per_output_channel_stays(value):
    model = _scaled_linear([("Mul", value)])
    assert "Mul" in [n.op_type for n in optimize_float(model, load_target("DPUCZDX8G_ISA1_B4096")).graph.node]


def test_a_layer_output_read_twice_keeps_its_scale():
    model = _scaled_linear([("Mul", GAMMA)])
    model.graph.node.append(helper.make_node("Relu", ["t1"], ["z"], name="other"))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    assert "Mul" in [n.op_type for n in optimize_float(model, load_target("DPUCZDX8G_ISA1_B4096")).graph.node]


@pytest.mark.parametrize("target, device", [("DPUCZDX8G_ISA1_B4096", "DPU"), ("bernoulli2", "BPU")])
def test_a_layer_scale_is_one_accelerator_subgraph_equal_to_ort_and_check_agrees(target, device):
    """Before: check put the Mul on the CPU and compile made three subgraphs."""
    model = _scaled_linear(CASES["affine"])
    assert {n.device for n in npuflow.check(model, target).nodes} == {"NPU"}
    assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)
