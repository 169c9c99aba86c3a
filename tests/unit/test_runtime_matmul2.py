"""Matrix products of two activations (``matmul2``: attention's ``Q K^T`` and ``A V``) run inside
the fused ONNX Runtime graphs (``fused_conv.matmul2``), not as integer kernels between them: a
minimal attention block on cpu-int8 (the DPU targets run such products on the CPU, in float) has
its two integer programs as fused runs only, whose outputs equal the kernels' (``fuse=False``), also
where the reduction is long enough for float64 accumulation; PP-OCRv4 rec (SVTR attention) has no
matmul2 left as a kernel and equals ``fuse=False``."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from benchmarks import datasets as D
from tests import fixture_models


def _attention(tokens: int, dim: int, seed: int = 0):
    """``softmax(x Wq (x Wk)^T) (x Wv) Wo`` on (1, tokens, dim)."""
    rng = np.random.default_rng(seed)
    names = ("wq", "wk", "wv", "wo")
    inits = [numpy_helper.from_array(rng.normal(0, dim ** -0.5, (dim, dim)).astype(np.float32), n) for n in names]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Softmax", ["qk"], ["a"], axis=-1), helper.make_node("MatMul", ["a", "v"], ["av"]),
             helper.make_node("MatMul", ["av", "wo"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, tokens, dim]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "attention", io[:1], io[1:], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("tokens,dim", [(24, 16), (600, 8)])
def test_attention_products_run_fused_equal_to_the_kernels(tokens, dim):
    # (600, 8): A V sums 600 products of up to 255 * 128: beyond 2^24, accumulated in float64
    rng = np.random.default_rng(1)
    frames = [rng.normal(0, 1, (1, tokens, dim)).astype(np.float32) for _ in range(6)]
    quantized = npuflow.quantize(_attention(tokens, dim), frames[:4], target="cpu-int8")
    compiled = npuflow.compile(quantized.model, "cpu-int8")
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    assert sum(op["op"] == "matmul2" for sg in compiled.manifest["subgraphs"] for op in sg.get("ops", [])) == 2
    plans = [ex.plan for ex in fast._executors if hasattr(ex, "plan")]
    assert plans and all(not any(isinstance(it, int) for it in p.items) for p in plans), [p.reasons for p in plans]
    for x in frames:
        a, b = fast.run({"x": x}), ref.run({"x": x})
        assert a["y"].dtype == b["y"].dtype and np.array_equal(a["y"], b["y"])


def test_ppocr_rec_attention_runs_fused_equal_to_the_kernels():
    samples = D.ocr_lines("calib", 5)[0]
    quantized = npuflow.quantize(str(fixture_models.ppocr_rec()), samples[:4], target="cpu-int8",
                                 input_shapes={"x": [1, 3, 48, 320]})
    compiled = npuflow.compile(quantized.model, "cpu-int8")
    assert sum(op["op"] == "matmul2" for sg in compiled.manifest["subgraphs"] for op in sg.get("ops", [])) >= 4
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    kernels = {ex._ops[k]["op"]: why for ex in fast._executors if hasattr(ex, "plan")
               for k, why in ex.plan.reasons.items()}
    assert "matmul2" not in kernels, kernels
    a, b = fast.run(samples[4]), ref.run(samples[4])
    for k in a:
        assert np.array_equal(a[k], b[k]), k
