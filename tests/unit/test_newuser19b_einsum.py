"""Round 19's open item 2: a batched-matrix-product ``Einsum`` is quantized and compiled as a ``MatMul``.

Attention written with ``torch.einsum`` (round 19's linear-attention ViT; a softmax attention's
``bhnd,bhmd->bhnm``) exported ``Einsum`` nodes that no target lowers: each ran in float on the CPU
between integer subgraphs.  The float passes (and ``check``, which judges the same graph) now write
a two-operand batched product as ``Transpose -> MatMul`` (``passes/einsum.py``), exact in float;
other equations stay ``Einsum``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.einsum import batched_product, einsums_as_matmul
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 8, 8]


def _attention(equation: str, opset: int = 17) -> onnx.ModelProto:
    """x -> q, k projections -> heads (1 x 2 x 8 x 8) -> ``Einsum(q, k)`` -> Relu -> Flatten -> Gemm."""
    rng = np.random.default_rng(19)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 16)).astype(np.float32), "wq"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 16)).astype(np.float32), "wk"),
             numpy_helper.from_array(np.array([1, 8, 2, 8], np.int64), "heads")]
    n_out = 16 if equation.endswith("->bhn") else 128
    inits.append(numpy_helper.from_array(rng.normal(0, 0.2, (4, n_out)).astype(np.float32), "wo"))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k0"], name="k"),
             helper.make_node("Reshape", ["q0", "heads"], ["q1"], name="q_heads"),
             helper.make_node("Reshape", ["k0", "heads"], ["k1"], name="k_heads"),
             helper.make_node("Transpose", ["q1"], ["qt"], name="q_t", perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["k1"], ["kt"], name="k_t", perm=[0, 2, 1, 3]),
             helper.make_node("Einsum", ["qt", "kt"], ["s"], name="scores", equation=equation),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wo"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize("equation, ops", [
    ("bhnd,bhmd->bhnm", ["Transpose", "MatMul"]),                  # softmax attention's scores: k transposed
    ("bhnd,bhne->bhde", ["Transpose", "MatMul"]),                  # linear attention's k^T v: k transposed
    ("bhnd,bhmd->bhmn", ["Transpose", "MatMul", "Transpose"]),     # the product's axes reordered
    ("bhnd,bhmd->bnhm", ["Transpose", "MatMul", "Transpose"]),
    ("bhnd,bhnd->bhn", ["Unsqueeze", "Transpose", "Unsqueeze", "MatMul", "Squeeze"]),  # a row-wise dot product
])
def test_a_batched_product_einsum_becomes_transpose_matmul_exactly(equation, ops, opset):
    model = _attention(equation, opset)
    rewritten = einsums_as_matmul(model)
    assert [n.op_type for n in rewritten.graph.node][6:-3] == ops
    x = samples(SHAPE, n=1, seed=2)[0]
    before, after = run(model, {"x": x}), run(rewritten, {"x": x})
    for b, a in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # the same products, summed in another order at most


@pytest.mark.parametrize("equation", ["bhnd,bhde,bhn->bhne", "bii->bi", "bhnd,hmd->bhnm", "...nd,...md->...nm",
                                      "bhnd,bhmd->bh", "bhnd,bhmd->bhnmd"])
def test_other_equations_are_left_alone(equation):
    assert batched_product(equation) is None


def test_softmax_attention_scores_run_in_integer_on_cpu_int8_equal_to_ort():
    model = _attention("bhnd,bhmd->bhnm")
    assert npuflow.check(model, "cpu-int8").node("scores").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target="cpu-int8")
    assert "Einsum" not in {n.op_type for n in q.model.graph.node}
    compiled = npuflow.compile(q.model, "cpu-int8")
    assert [sg["device"] for sg in compiled.manifest["subgraphs"]] == ["CPU-INT8"]
    x = samples(SHAPE, n=1, seed=3)[0]
    assert max(compare_layerwise_with_ort(q.model, {"x": x}, "cpu-int8").values()) <= 1
    got = npuflow.Session(compiled).run({"x": x})
    for name, want in zip(("y", "s"), run(q.model, {"x": x})):
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_on_targets_without_activation_products_the_reason_names_matmul(target):
    report = npuflow.check(_attention("bhnd,bhmd->bhnm"), target).node("scores")
    assert report.op_type == "MatMul" and report.device == "CPU"
