"""Dense convolutions with fixed-point epilogues on ``ConvInteger`` (issue 19, peak memory).

A float-scale target (bernoulli2) requantises every convolution with a per-channel fixed-point
multiplier (``numerics.requantize_fixed_point``).  Its fused runs took the exact accumulator from
a float32 ``Conv``: four bytes a weight in ONNX Runtime, and a second blocked-layout copy of
them at optimisation level "all" (YOLOv8n 320: 11.5 MiB of float32 weights, the session 28.8 MiB
of resident memory).  Where this CPU's uint8 x uint8 ``ConvInteger`` is exact, the same int32
accumulator comes from it on one byte a weight, and the same requantisation follows on it cast to
float32 (exact: the bound is the float ``Conv``'s own, every partial sum below 2^24), so the
codes stay the kernels' bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import ort_kernels
from npuflow.runtime import fused

TARGET = "bernoulli2"


@pytest.fixture(autouse=True)
def _no_qlinearconv(monkeypatch):
    """These pin the ``ConvInteger`` and float ``Conv`` forms, which since a8a74eb serve the channels
    without an exact float32 multiplier (the others run on ``QLinearConv``: ``fused_fixed.kernel_form``,
    tested in ``test_runtime_fixed_qlinear.py``), so every channel takes them here."""
    from npuflow.runtime import fused_fixed

    monkeypatch.setattr(fused_fixed, "kernel_form", lambda *args, **kwargs: None)


def _float_model(cin: int = 8, k: int = 3) -> onnx.ModelProto:
    """Conv k x k (cin -> 16, padded) + Relu, Conv 1x1 (16 -> 8) + Relu: dense convolutions with
    per-channel weights, which bernoulli2 requantises in fixed point."""
    rng = np.random.default_rng(61)
    # weights of one magnitude: every code near +-127, so a long reduction's sums pass 2^24
    w1 = (0.4 * np.sign(rng.normal(0, 1, (16, cin, k, k)))).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32)
    w2[3] *= 1e-4  # a near-dead channel: its fixed-point range may be one value
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (rng.normal(0, 0.2, 16).astype(np.float32), "b1"),
                                                        (w2, "w2"), (rng.normal(0, 0.2, 8).astype(np.float32), "b2"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[k // 2] * 4, kernel_shape=[k, k]),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c2"], ["y"], "relu2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 12, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 12, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _compiled(cin: int = 8, k: int = 3):
    rng = np.random.default_rng(62)
    samples = [{"x": rng.normal(0, 1, (1, cin, 12, 10)).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(_float_model(cin, k), samples, target=TARGET)
    return npuflow.compile(quantized.model, TARGET)


def _runs(session: npuflow.Session) -> list[fused.FusedRun]:
    return [it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
            if isinstance(it, fused.FusedRun)]


def test_fixed_point_dense_convolutions_run_on_convinteger_exactly():
    assert ort_kernels.convinteger_exact()
    compiled = _compiled()
    convs = [op for sg in compiled.manifest["subgraphs"] for op in sg.get("ops", []) if op["op"] == "conv"]
    assert len(convs) == 2 and all(op["attrs"]["epilogue"]["mode"] == "fixed" for op in convs)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    rng = np.random.default_rng(63)
    for scale in (0.5, 3.0, 40.0):  # everyday codes, wide ones, saturated ones
        x = {"x": (rng.normal(0, scale, (1, 8, 12, 10))).astype(np.float32)}
        a, b = fast.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    graphs = [run.graph() for run in _runs(fast)]
    ops = [n.op_type for g in graphs for n in g.nodes]
    assert ops.count("ConvInteger") == 2 and "Conv" not in ops, ops
    # one byte a weight reaches ONNX Runtime: no float32 weight array is left in the fused runs
    weights = [g.arrays[n.input[1]] if n.input[1] in g.arrays else
               numpy_helper.to_array(next(t for t in g.inits if t.name == n.input[1]))
               for g in graphs for n in g.nodes if n.op_type == "ConvInteger"]
    assert weights and all(w.dtype == np.uint8 for w in weights)


def test_without_an_exact_convinteger_the_float_conv_serves_fixed_point(monkeypatch):
    from npuflow.runtime import fused_conv

    monkeypatch.setattr(fused_conv, "convinteger_exact", lambda: False)
    compiled = _compiled()
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    x = {"x": np.random.default_rng(64).normal(0, 3.0, (1, 8, 12, 10)).astype(np.float32)}
    a, b = fast.run(x), ref.run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ops = [n.op_type for run in _runs(fast) for n in run.graph().nodes]
    assert "ConvInteger" not in ops and ops.count("Conv") == 2, ops


@pytest.mark.parametrize("cin", [256])
def test_accumulators_beyond_two_to_the_24_keep_the_float_chunks(cin):
    # 3x3x256 products of int8 codes can reach 2^24: the float32 cast of ConvInteger's int32
    # would round, so that convolution keeps the float Conv in float64 chunks, still exact
    compiled = _compiled(cin=cin)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    x = {"x": np.random.default_rng(65).normal(0, 40.0, (1, cin, 12, 10)).astype(np.float32)}
    a, b = fast.run(x), ref.run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ops = [n.op_type for run in _runs(fast) for n in run.graph().nodes]
    assert "Conv" in ops and "ConvInteger" in ops, ops  # the 1x1 one's sums stay small
