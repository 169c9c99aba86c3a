"""Matrix products of two activations (``matmul2``: attention's ``Q K^T`` and ``A V``) run inside
the fused ONNX Runtime graphs (``fused_conv.matmul2``), not as integer kernels between them: a
minimal attention block on cpu-int8 (the DPU targets run such products on the CPU, in float) has
its two integer programs as fused runs only, whose outputs equal the kernels' (``fuse=False``), also
where the reduction is long enough for float64 accumulation; PP-OCRv4 rec (SVTR attention) has no
matmul2 left as a kernel and equals ``fuse=False``; the fixed-point, power-of-two and float epilogues
(which other targets and chains give) are fused and exact too."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import numerics as nm
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


@pytest.mark.parametrize("tokens,dim", [(24, 16), (600, 8)])
@pytest.mark.parametrize("mode", ["fixed", "shift", "float", "float_chain"])
def test_every_epilogue_of_the_attention_products_runs_fused_equal_to_the_kernels(mode, tokens, dim):
    # the compiler gives cpu-int8's products ORT's float multiplier ("scale"); a fixed-point
    # multiplier, a power-of-two shift and a float epilogue (with a LeakyReLU chain) written into
    # the same manifest are what other targets and chains give: each fused, each equal to the kernels
    rng = np.random.default_rng(2)
    frames = [rng.normal(0, 1, (1, tokens, dim)).astype(np.float32) for _ in range(4)]
    compiled = npuflow.compile(npuflow.quantize(_attention(tokens, dim), frames, target="cpu-int8").model, "cpu-int8")
    for op in (op for sg in compiled.manifest["subgraphs"] for op in sg.get("ops", []) if op["op"] == "matmul2"):
        old = op["attrs"]["epilogue"]
        assert old["mode"] == "scale"
        ratio = float(np.asarray(old["multiplier"]).reshape(-1)[0])
        ep = {k: v for k, v in old.items() if k not in ("multiplier", "mode")}
        if mode == "fixed":
            m, s = nm.quantize_multiplier(ratio)
            ep.update(mode="fixed", multiplier=m, shift=s)
        elif mode == "shift":
            ep.update(mode="shift", shift=int(round(-np.log2(ratio))), round="half_up")
        else:
            chain = [{"op": "LeakyRelu", "in": [{"t": "$x"}], "out": "l", "attrs": {"alpha": 0.1}}]
            ep.update(mode="float", acc_scale=ratio * old["scale"], chain=chain if mode == "float_chain" else [],
                      result="l" if mode == "float_chain" else "$x")
        op["attrs"]["epilogue"] = ep
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    plans = [ex.plan for ex in fast._executors if hasattr(ex, "plan")]
    assert plans and all(not any(isinstance(it, int) for it in p.items) for p in plans), [p.reasons for p in plans]
    outs = [(fast.run({"x": x})["y"], ref.run({"x": x})["y"]) for x in frames]
    assert all(np.array_equal(a, b) for a, b in outs) and np.ptp(outs[0][1]) > 0
