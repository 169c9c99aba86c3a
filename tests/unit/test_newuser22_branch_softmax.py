"""Round 22 (SKNet): selective-kernel attention ``Conv (2C) -> Reshape [N, 2, C, 1, 1] -> Softmax(axis 1)
-> Gather(1, 0 | 1)`` was four float CPU nodes per block on every target (SKNet: 5 compiled subgraphs on
bernoulli2 and cpu-int8); ``passes/branch_softmax.py`` writes each branch weight as
``Sigmoid(Conv(W_k - W_{1-k}))`` (softmax over two logits is the sigmoid of their difference)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from tests.compile_check import compare_with_ort

C = 8


def _sk(branches: int = 2, index=(0, 1), axis: int = 1, bias: bool = True) -> onnx.ModelProto:
    """SK attention on two 3x3 branches of x: GAP -> Conv -> Relu -> Conv (branches x C) -> Reshape ->
    Softmax -> Gathers -> Mul with each branch -> Add."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (C, C, 3, 3)).astype(np.float32), f"wb{k}") for k in range(2)]
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (4, C, 1, 1)).astype(np.float32), "wz"),
              numpy_helper.from_array(rng.normal(0, 0.5, (branches * C, 4, 1, 1)).astype(np.float32), "wa"),
              numpy_helper.from_array(rng.normal(0, 0.5, branches * C).astype(np.float32), "ba"),
              numpy_helper.from_array(np.array([1, branches, C, 1, 1], np.int64), "shape")]
    inits += [numpy_helper.from_array(np.array(i, np.int64), f"i{k}") for k, i in enumerate(index)]
    nodes = [helper.make_node("Conv", ["x", f"wb{k}"], [f"u{k}"], name=f"branch{k}", pads=[1] * 4) for k in range(2)]
    nodes += [helper.make_node("Add", ["u0", "u1"], ["s"], name="sum"),
              helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
              helper.make_node("Conv", ["p", "wz"], ["z0"], name="fc"),
              helper.make_node("Relu", ["z0"], ["z"], name="fc_relu"),
              helper.make_node("Conv", ["z", "wa", "ba"] if bias else ["z", "wa"], ["a"], name="att"),
              helper.make_node("Reshape", ["a", "shape"], ["ar"], name="reshape"),
              helper.make_node("Softmax", ["ar"], ["sm"], name="softmax", axis=axis)]
    nodes += [helper.make_node("Gather", ["sm", f"i{k}"], [f"g{k}"], name=f"gather{k}", axis=1) for k in range(2)]
    nodes += [helper.make_node("Mul", [f"u{k}", f"g{k}"], [f"m{k}"], name=f"mul{k}") for k in range(2)]
    nodes.append(helper.make_node("Add", ["m0", "m1"], ["y"], name="out"))
    graph = helper.make_graph(nodes, "sk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _feeds(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(0, 1, (1, C, 6, 6)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("kw", [{}, {"index": (-2, -1)}, {"axis": -4}, {"bias": False}, {"index": (1, 0)}])
def test_two_branch_softmax_becomes_two_sigmoids_of_the_same_value(kw):
    model = _sk(**kw)
    opt = optimize_float(model)
    ops = [n.op_type for n in opt.graph.node]
    assert "Softmax" not in ops and "Gather" not in ops and "Reshape" not in ops, ops
    assert ops.count("Sigmoid") == 2
    for feed in _feeds(3):
        np.testing.assert_allclose(_run(opt, feed), _run(model, feed), rtol=0, atol=2e-5)


def test_three_branches_are_left_as_they_are():
    ops = [n.op_type for n in optimize_float(_sk(branches=3)).graph.node]
    assert "Softmax" in ops and "Sigmoid" not in ops


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
def test_sk_attention_compiles_to_one_subgraph_equal_to_ort(target, tmp_path, monkeypatch):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    feeds = _feeds(8)
    q = npuflow.quantize(_sk(), feeds, target=target)
    compiled = npuflow.compile(q.model, target)
    assert len(compiled.subgraphs) == 1, compiled.notes
    assert max(compare_with_ort(q.model, feeds[0], target).values()) == 0
