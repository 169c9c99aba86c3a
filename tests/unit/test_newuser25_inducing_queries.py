"""New-user round 25: learned per-head queries times computed keys (``Q @ k^T``, Q a constant) run on the accelerator.

A Set Transformer's induced attention block attends from ``m`` learned inducing points: their
projected queries are a constant ``1 x h x m x d``, so its scores are one ``MatMul`` whose *first*
operand is a per-head constant.  Round 24's rewrite took 2-D constants only, and check said "MatMul's
first operand is a constant (W @ x); only x @ W is lowered" (cpu-int8: the scores ran in float on the
CPU, twice per block).  The float passes now transpose each head's matrix and the per-head pass
writes the product as 2-D ones."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.const_left_matmul import const_left_matmuls_as_right
from npuflow.passes.head_matmul import head_matmuls_as_2d
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 4, 16, 8]  # batch, heads, set size, head width


def _inducing_scores(heads: int = 4) -> onnx.ModelProto:
    """k = ReLU(x @ W1) -> k^T -> Q @ k^T (Q: 1 x heads x 3 x 8, constant) -> @ W2: induced attention scores."""
    rng = np.random.default_rng(25)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (1, heads, 3, 8)).astype(np.float32), "q"),
             numpy_helper.from_array(rng.normal(0, 0.3, (16, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="key"),
             helper.make_node("Relu", ["h"], ["k"], name="relu"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "isab", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_per_head_queries_become_per_head_products_with_the_same_values():
    model = _inducing_scores()
    target = load_target("cpu-int8")
    rewritten = head_matmuls_as_2d(const_left_matmuls_as_right(model, target), target)
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    consts = [rewritten.graph.initializer[i] for i in range(len(rewritten.graph.initializer))]
    matmuls = [n for n in rewritten.graph.node if n.op_type == "MatMul"]
    dims = {t.name: len(t.dims) for t in consts}
    assert all(dims.get(n.input[1], 2) == 2 and n.input[0] not in dims for n in matmuls)


def test_a_constant_that_is_not_one_matrix_per_head_is_left():
    model = _inducing_scores()
    q = next(t for t in model.graph.initializer if t.name == "q")
    q.CopyFrom(numpy_helper.from_array(np.ones((2, 4, 3, 8), np.float32), "q"))  # two leading axes not 1
    assert const_left_matmuls_as_right(model, load_target("cpu-int8")) is model


def test_cpu_int8_runs_the_scores_in_one_integer_subgraph_equal_to_ort():
    model = _inducing_scores()
    assert npuflow.check(model, "cpu-int8").node("scores").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, "cpu-int8", "CPU-INT8")
