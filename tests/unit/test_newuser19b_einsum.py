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
from npuflow.passes.einsum import batched_product, einsums_as_matmul, product_steps
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
def test_other_equations_are_not_one_batched_product(equation):
    assert batched_product(equation) is None


@pytest.mark.parametrize("equation", ["bii->bi", "bhnd,hmd->bhnm", "...nd,...md->...nm", "bhnd,bhmd->bh",
                                      "ab,bc,cd,de->ae", "bhnd,bhde,bhm->bhne"])
def test_equations_that_are_no_chain_of_products_are_left_alone(equation):
    assert product_steps(equation) is None


def _einsum_model(equation: str, shapes: dict[str, list[int]], opset: int) -> onnx.ModelProto:
    """The inputs named by ``shapes`` (in order) -> one ``Einsum`` -> y."""
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in shapes.items()]
    node = helper.make_node("Einsum", list(shapes), ["y"], name="einsum", equation=equation)
    graph = helper.make_graph([node], "einsum", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize("equation, shapes, ops", [
    # linear attention's numerator times its normaliser: (q k^T v) * z, a MatMul then a broadcast Mul
    ("bhnd,bhde,bhn->bhne", {"q": [1, 2, 8, 4], "kv": [1, 2, 4, 5], "z": [1, 2, 8]},
     ["MatMul", "Unsqueeze", "Mul"]),
    ("bhn,bhnd,bhde->bhne", {"z": [1, 2, 8], "q": [1, 2, 8, 4], "kv": [1, 2, 4, 5]},
     ["Unsqueeze", "Mul", "MatMul"]),                               # z scales q's rows, then the product
    ("ij,jk,kl->il", {"a": [3, 4], "b": [4, 5], "c": [5, 6]}, ["MatMul", "MatMul"]),
    ("bhne,bhn->bhne", {"v": [1, 2, 8, 5], "z": [1, 2, 8]}, ["Unsqueeze", "Mul"]),
    ("bhn,bhne->bhen", {"z": [1, 2, 8], "v": [1, 2, 8, 5]}, ["Unsqueeze", "Transpose", "Mul"]),
])
def test_chains_of_products_become_matmul_and_mul_exactly(equation, shapes, ops, opset):
    model = _einsum_model(equation, shapes, opset)
    rewritten = einsums_as_matmul(model)
    assert [n.op_type for n in rewritten.graph.node if n.op_type != "Transpose" or "Transpose" in ops] == ops
    rng = np.random.default_rng(5)
    feeds = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in shapes.items()}
    (before,), (after,) = run(model, feeds), run(rewritten, feeds)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


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


def _linear_attention() -> onnx.ModelProto:
    """x -> q, k, v heads and a per-row gate z -> ``Einsum(k, v)`` -> ``Einsum(q, kv, z)`` -> Relu -> Gemm:
    round 19's linear attention with its three-operand ``bhnd,bhde,bhn->bhne``."""
    rng = np.random.default_rng(20)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 16)).astype(np.float32), f"w{t}") for t in "qkv"]
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (8, 2)).astype(np.float32), "wz"),
              numpy_helper.from_array(np.array([1, 8, 2, 8], np.int64), "heads"),
              numpy_helper.from_array(rng.normal(0, 0.2, (4, 128)).astype(np.float32), "wo")]
    nodes = []
    for t in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{t}"], [f"{t}0"], name=t),
                  helper.make_node("Reshape", [f"{t}0", "heads"], [f"{t}1"], name=f"{t}_heads"),
                  helper.make_node("Transpose", [f"{t}1"], [f"{t}t"], name=f"{t}_t", perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("MatMul", ["x", "wz"], ["z0"], name="z"),
              helper.make_node("Transpose", ["z0"], ["z1"], name="z_t", perm=[0, 2, 1]),
              helper.make_node("Sigmoid", ["z1"], ["z2"], name="z_gate"),
              helper.make_node("Einsum", ["kt", "vt"], ["kv"], name="kv", equation="bhnd,bhne->bhde"),
              helper.make_node("Einsum", ["qt", "kv", "z2"], ["a"], name="attend", equation="bhnd,bhde,bhn->bhne"),
              helper.make_node("Relu", ["a"], ["r"], name="relu"),
              helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wo"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "linear_attention",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_linear_attention_with_a_three_operand_einsum_runs_in_integer_on_cpu_int8_equal_to_ort():
    model = _linear_attention()
    assert npuflow.check(model, "cpu-int8").node("attend").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target="cpu-int8")
    assert "Einsum" not in {n.op_type for n in q.model.graph.node}
    compiled = npuflow.compile(q.model, "cpu-int8")
    assert [sg["device"] for sg in compiled.manifest["subgraphs"]] == ["CPU-INT8"]
    x = samples(SHAPE, n=1, seed=3)[0]
    assert max(compare_layerwise_with_ort(q.model, {"x": x}, "cpu-int8").values()) <= 1
    (want,) = run(q.model, {"x": x})
    np.testing.assert_allclose(npuflow.Session(compiled).run({"x": x})["y"], want, rtol=0, atol=1e-6)
