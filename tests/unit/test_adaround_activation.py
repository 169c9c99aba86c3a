"""AdaRound reconstructs a layer's output after the activation fused behind it (issue 18): the chain
is found in the QDQ graph, evaluated exactly as ONNX Runtime does with its derivative, used as the
target and the loss of the layer problem, and pays on the post-activation error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from npuflow import numerics
from npuflow.ort_session import open_session
from npuflow.quant.algorithms.activation import fused_activation
from npuflow.quant.algorithms.adaround import adaround
from npuflow.quant.algorithms.layer_problem import LayerProblem
from tests.onnx_builders import const, conv_node, model, vi


def _conv_then(chain: list[onnx.NodeProto], inits=(), out: str = "a") -> tuple[onnx.ModelProto, onnx.NodeProto]:
    """``x -> Conv -> chain -> QuantizeLinear/DequantizeLinear -> out_dq`` (the chain reads ``y``)."""
    conv, w = conv_node("conv", "x", "y", 4, 8)
    qdq = [helper.make_node("QuantizeLinear", [out, "s", "zp"], ["q"], name="q"),
           helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq")]
    inits = [w, const("s", np.float32(0.125)), const("zp", np.int8(0)), *inits]
    return model([conv, *chain, *qdq], [vi("x", [1, 4, 6, 6])], [vi("dq", None)], inits), conv


def _hardswish():
    """PP-OCRv4's hard-swish as the float graph writes it (npuflow's hard-sigmoid scale)."""
    return ([helper.make_node("Add", ["y", "three"], ["t"], name="add"),
             helper.make_node("Clip", ["t", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["c", "k"], ["h"], name="hsig"),
             helper.make_node("Mul", ["y", "h"], ["a"], name="hswish")],
            [const("three", np.float32(3)), const("zero", np.float32(0)), const("six", np.float32(6)),
             const("k", np.float32(0.16668701))])


def _run_chain(nodes, inits, y: np.ndarray) -> np.ndarray:
    """ONNX Runtime's value of the chain ``y -> ... -> a``."""
    sub = model(nodes, [vi("y", list(y.shape))], [vi("a", None)], inits)
    return open_session(sub, level="disable", threads=1, what="run").run(None, {"y": y})[0]


@pytest.mark.parametrize("name", ["hardswish", "relu", "clip6", "clip_max_only", "hardsigmoid_op", "leaky"])
def test_fused_activation_matches_onnx_runtime_and_its_slope(name):
    chains = {
        "hardswish": _hardswish(),
        "relu": ([helper.make_node("Relu", ["y"], ["a"], name="relu")], []),
        "clip6": ([helper.make_node("Clip", ["y", "zero", "six"], ["a"], name="clip")],
                  [const("zero", np.float32(0)), const("six", np.float32(6))]),
        "clip_max_only": ([helper.make_node("Clip", ["y", "", "six"], ["a"], name="clip")], [const("six", np.float32(6))]),
        "hardsigmoid_op": ([helper.make_node("HardSigmoid", ["y"], ["a"], name="hs", alpha=0.2, beta=0.5)], []),
        "leaky": ([helper.make_node("LeakyRelu", ["y"], ["a"], name="lr", alpha=0.1)], []),
    }
    nodes, inits = chains[name]
    m, conv = _conv_then(nodes, inits)
    act = fused_activation(m, conv)
    assert act is not None and act.source == "y" and act.output == "a"
    y = np.random.default_rng(0).normal(scale=4, size=(1, 8, 6, 6)).astype(np.float32)
    value, slope = act(y)
    np.testing.assert_array_equal(value, _run_chain(nodes, inits, y))  # bit-exact, float32 like ORT
    eps = np.float32(1e-2)
    numeric = (act.value(y + eps) - act.value(y - eps)) / (2 * eps)
    smooth = np.abs(numeric - slope) < 1e-2
    assert smooth.mean() > 0.95  # all but the values next to a kink (ReLU's 0, the clip bounds)


def test_no_activation_when_the_layer_output_is_quantized_or_leaves_the_chain():
    m, conv = _conv_then([], out="y")  # Conv -> Q: nothing fused
    assert fused_activation(m, conv) is None
    # a residual add reads a second tensor: not an activation of the layer alone
    m, conv = _conv_then([helper.make_node("Add", ["y", "x"], ["a"], name="res")])
    assert fused_activation(m, conv) is None
    # the pre-activation value also leaves the chain (another consumer): reconstructing after
    # the activation would ignore what that consumer reads
    nodes = [helper.make_node("Relu", ["y"], ["a"], name="relu"), helper.make_node("Neg", ["y"], ["n"], name="neg")]
    m, conv = _conv_then(nodes)
    m.graph.output.append(vi("n", None))
    assert fused_activation(m, conv) is None


def _relu_problem(seed: int, act) -> tuple[LayerProblem, np.ndarray]:
    """A layer whose outputs are mostly negative (a ReLU drops them), inputs with a per-channel gain
    error (an upstream int8 layer): the post-activation target differs from the pre-activation one."""
    rng = np.random.default_rng(seed)
    o, k, m = 16, 27, 2048
    w = (rng.normal(size=(1, o, k)) * 0.2).astype(np.float32)
    xf = np.maximum(rng.normal(size=(1, k, m)), 0).astype(np.float32)
    b = (rng.normal(size=(1, o, 1)) * 0.3 - 0.6).astype(np.float32)
    z = np.matmul(w, xf) + b
    xq = (xf * (1 + 0.05 * rng.normal(size=(1, k, 1)))).astype(np.float32)
    s = np.full((1, o, 1), numerics.pow2_scale(numerics.pow2_fix_pos(np.abs(w).max())), np.float32)
    y = z if act is None else act(z)[0]
    return LayerProblem(w, s, b, xq, y, -127, 127, "std_round", act=act), z


def _relu(z):
    return np.maximum(z, np.float32(0)), (z > 0).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_adaround_after_the_activation_lowers_the_activated_error(backend):
    wins = 0
    for seed in range(3):
        post, _ = _relu_problem(seed, _relu)
        pre, _ = _relu_problem(seed, None)
        assert float(post.y.min()) == 0.0 and float(pre.y.min()) < 0  # the targets differ
        codes_post = adaround(post, iters=200, backend=backend)
        codes_pre = adaround(pre, iters=200, backend=backend)
        # both judged on what the next layer reads: the activated output
        assert post.error(codes_post) < post.error(post.nearest_codes())
        wins += post.error(codes_post) < post.error(codes_pre)
    assert wins == 3


def test_fast_finetune_uses_the_post_activation_target(monkeypatch):
    """End to end on a Conv -> ReLU model: AdaRound's problem carries the ReLU, its targets are the
    float model's activated outputs; ``post_activation: false`` gives the pre-activation problem.
    The finetuned model compiles and runs bit-exact with ONNX Runtime (only integer codes changed)."""
    from tests.compile_check import compare_with_ort

    import npuflow
    from npuflow.quant.algorithms import fast_finetune as ff

    conv, w = conv_node("conv", "x", "y", 4, 8)
    relu = helper.make_node("Relu", ["y"], ["out"], name="relu")
    m = model([conv, relu], [vi("x", [1, 4, 8, 8])], [vi("out", None)], [w])
    rng = np.random.default_rng(0)
    calib = [{"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    seen: list[LayerProblem] = []
    real = ff.adaround

    def spy(p, *a, **k):
        seen.append(p)
        return real(p, *a, **k)

    monkeypatch.setattr(ff, "adaround", spy)
    monkeypatch.setenv("NPUFLOW_CACHE", str(__import__("tempfile").mkdtemp()))
    for post in (True, False):
        seen.clear()
        cfg = {"include_bias_corr": False, "fast_finetune": {"method": "adaround", "iters": 20, "post_activation": post}}
        q = npuflow.quantize(m, calib, target="DPUCZDX8G_ISA1_B4096", config=cfg)
        (p,) = seen
        assert (p.act is not None) is post
        assert (float(p.y.min()) >= 0.0) is post  # ReLU'd targets only after the activation
        if post:
            assert not any(compare_with_ort(q.model, calib[0], "DPUCZDX8G_ISA1_B4096").values())


def test_post_activation_is_off_by_default_and_keeps_the_pre_activation_cache():
    """Off by default (it cost EfficientNet-Lite0 on every seed measured, docs/accuracy.md); the cache key of a
    pre-activation problem is the one it had before the option existed, so cached layers stay valid."""
    from npuflow.quant.algorithms.fast_finetune import FinetuneSettings
    from npuflow.quant.config import QuantConfig

    assert QuantConfig.from_dict({"fast_finetune": {"method": "adaround"}}).fast_finetune.post_activation is False
    st = FinetuneSettings(method="adaround", round_mode="std_round", bias_round_mode="std_round")
    assert st.post_activation is False and "post_activation" not in st.key()
    on = FinetuneSettings(method="adaround", round_mode="std_round", bias_round_mode="std_round", post_activation=True)
    assert on.key() != st.key()
