"""Round 24 of new-user flows: a MatMul with one constant matrix per head runs on the accelerator.

BoTNet's relative-position logits ``q^T @ P`` (P: 1 x h x K x N, one K x N matrix per head) read
"MatMul constant must be 2-D" and ran in float on the CPU on cpu-int8, between two integer
subgraphs.  The float passes (and check) now write it head by head: a width-1 ``Slice``, a 2-D
product and a ``Concat``, exact; bernoulli2 (no transpose) keeps the MatMul.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.head_matmul import head_matmuls_as_2d
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 4, 6, 8]  # N x heads x tokens x K


def _position_logits(lead: tuple = (1, 4)) -> onnx.ModelProto:
    """x @ W1 -> ReLU -> @ P (one 8 x 6 matrix per head) -> + x @ W2 (content logits): BoTNet's logits."""
    rng = np.random.default_rng(24)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (*lead, 8, 6)).astype(np.float32), "p"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 6)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="q"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "p"], ["pos"], name="position"),
             helper.make_node("MatMul", ["x", "w2"], ["c"], name="content"),
             helper.make_node("Add", ["pos", "c"], ["y"], name="logits")]
    graph = helper.make_graph(nodes, "bot_logits", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_per_head_constant_product_is_per_head_2d_products_with_the_same_values():
    model = _position_logits()
    rewritten = head_matmuls_as_2d(model, load_target("cpu-int8"))
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Slice") == 4 and ops.count("Concat") == 1 and ops.count("MatMul") == 2 + 4
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


def test_constants_shared_by_the_heads_and_targets_without_a_transpose_are_left():
    model = _position_logits()
    assert head_matmuls_as_2d(model, load_target("bernoulli2")) is model
    shared = _position_logits(lead=(1, 1))
    assert head_matmuls_as_2d(shared, load_target("cpu-int8")) is shared


def test_cpu_int8_runs_the_position_logits_in_one_integer_subgraph_equal_to_ort():
    model = _position_logits()
    assert npuflow.check(model, "cpu-int8").node("position").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, "cpu-int8", "CPU-INT8")
