"""Round 24 of new-user flows: a MatMul with a constant first operand (``W @ x``) runs on the accelerator.

Linformer's key / value projections along the sequence, ``E @ k`` (E: k x n, k: B x n x D), read
"MatMul's first operand is a constant (W @ x); only x @ W is lowered" and ran in float on the CPU on
cpu-int8 and the DPUs.  The float passes (and check) now write it ``(x^T @ W^T)^T`` where the target
runs a transpose; bernoulli2, which has none, keeps the MatMul.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.const_left_matmul import const_left_matmuls_as_right
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 16, 8]


def _linformer_projection() -> onnx.ModelProto:
    """x @ W1 -> ReLU -> E @ . (E: 4 x 16, along the sequence) -> @ W2: Linformer's key projection."""
    rng = np.random.default_rng(24)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.25, (4, 16)).astype(np.float32), "e"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["e", "r"], ["p"], name="project"),
             helper.make_node("MatMul", ["p", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "linformer_e", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_w_at_x_is_transposes_around_x_at_w_transposed_with_the_same_values():
    model = _linformer_projection()
    rewritten = const_left_matmuls_as_right(model, load_target("cpu-int8"))
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Relu", "Transpose", "MatMul", "Transpose", "MatMul"]
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_target_without_a_transpose_keeps_the_matmul():
    model = _linformer_projection()
    assert const_left_matmuls_as_right(model, load_target("bernoulli2")) is model


def test_cpu_int8_runs_the_projection_in_one_integer_subgraph_equal_to_ort():
    model = _linformer_projection()
    assert npuflow.check(model, "cpu-int8").node("project").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, "cpu-int8", "CPU-INT8")
