"""Target rewrites (npuflow/passes/target_rewrites.py): a HardSigmoid's parameters folded into the
layer before it, a GlobalAveragePool over a map too large for the target's pooling window split in
two (a whole-axis AveragePool's cascade: test_newuser20_axis_mean.py).  Each: the float function
kept (ONNX Runtime, float tolerance), the rewritten nodes placed on DPUCZDX8G_ISA1_B4096 where they
were on the CPU, nothing changed where the target runs the op as it is."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.passes.target_rewrites import target_rewrites
from npuflow.targets import load_target

from tests.compile_check import assert_one_subgraph_equal_to_ort

from .quant_nets import model_from, run

DPU = "DPUCZDX8G_ISA1_B4096"
CPU_TARGET = "cpu-int8"  # runs any HardSigmoid and any GlobalAveragePool as they are
rng = np.random.default_rng(0)


def _f(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _se_block(layer: str, alpha: float, beta: float, shared: bool = False):
    """x -> layer -> HardSigmoid(alpha, beta) -> * x (an SE-style gate); ``shared``: the layer's
    output is also a graph output (a second reader, so the layer cannot take the scale)."""
    if layer == "Gemm":
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["t"], name="layer", transB=1)]
        inits = [_f("w", rng.normal(0, 1, (6, 6))), _f("b", rng.normal(0, 1, 6))]
        shape = [2, 6]
    else:
        wshape = (6, 6, 3, 3) if layer == "Conv" else (6, 6, 1, 1)
        nodes = [helper.make_node(layer, ["x", "w", "b"], ["t"], name="layer", pads=[1, 1, 1, 1] if layer == "Conv"
                                  else [0, 0, 0, 0])]
        inits = [_f("w", rng.normal(0, 0.5, wshape)), _f("b", rng.normal(0, 1, 6))]
        shape = [1, 6, 8, 8]
    nodes += [helper.make_node("HardSigmoid", ["t"], ["h"], name="hsig", alpha=alpha, beta=beta),
              helper.make_node("Mul", ["x", "h"], ["y"], name="gate")]
    outputs = [_vi("y", shape)] + ([_vi("t", shape)] if shared else [])
    return model_from(nodes, inits, [_vi("x", shape)], outputs), shape


def _same_function(a, b, shape, tol=1e-5):
    x = rng.normal(0, 3, shape).astype(np.float32)  # wide enough that both clip bounds are hit
    ra, rb = run(a, {"x": x}), run(b, {"x": x})
    for u, v in zip(ra, rb, strict=True):
        assert np.abs(u - v).max() <= tol * max(1.0, np.abs(u).max())


def _placed(model, target):
    return {n.name: n.device for n in npuflow.check(model, target).nodes}


@pytest.mark.parametrize("layer", ["Conv", "ConvTranspose", "Gemm"])
@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (0.3, 0.4), (-0.25, 0.6)])
def test_hard_sigmoid_parameters_fold_into_the_layer(layer, alpha, beta):
    m, shape = _se_block(layer, alpha, beta)
    # the DPU's hard-sigmoid is relu6(x + 3) / 6 only; check judges the rewritten graph, as compile lowers it
    checked = npuflow.check(m, DPU).node("hsig")
    assert checked.device == "NPU" and "hard_sigmoid_into_layer" in " ".join(checked.messages)
    out, done = target_rewrites(m, load_target(DPU))
    assert [(r.node, r.rewrite, r.applied) for r in done] == [("hsig", "hard_sigmoid_into_layer", True)]
    hs = next(n for n in out.graph.node if n.name == "hsig")
    assert {a.name: a.f for a in hs.attribute} == pytest.approx({"alpha": 1 / 6, "beta": 0.5})
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in m.graph.node]
    _same_function(m, out, shape)
    placed = _placed(out, DPU)
    assert placed["hsig"] == "NPU" and set(placed.values()) == {"NPU"}


def test_hard_sigmoid_left_where_the_layer_output_has_another_reader():
    m, shape = _se_block("Conv", 0.2, 0.5, shared=True)
    left = npuflow.check(m, DPU).node("hsig")  # check reports it where the rewrite cannot help
    assert left.device == "CPU" and "target_rewrites" in left.hint
    assert left.messages == ["not rewritten (hard_sigmoid_into_layer): HardSigmoid(alpha=0.2, beta=0.5) stays: its input "
                             "is not the output of a Conv/ConvTranspose/Gemm with constant weights read by it alone"]
    out, done = target_rewrites(m, load_target(DPU))
    assert [(r.node, r.applied) for r in done] == [("hsig", False)] and "read by it alone" in done[0].detail
    assert out.graph.node[1].attribute[0].f == pytest.approx(0.2)
    _same_function(m, out, shape, tol=0.0)


def test_hard_sigmoid_unchanged_where_the_target_runs_it():
    m, _ = _se_block("Conv", 0.2, 0.5)
    for target in (CPU_TARGET, "bernoulli2"):  # a generic int8 kernel; a lookup table
        assert _placed(m, target)["hsig"] == "NPU"
        out, done = target_rewrites(m, load_target(target))
        assert done == [] and out.SerializeToString() == m.SerializeToString()
    std, _ = _se_block("Conv", 1 / 6, 0.5)  # already the DPU's form
    out, done = target_rewrites(std, load_target(DPU))
    assert done == [] and out.SerializeToString() == std.SerializeToString()


def _gap(h: int, w: int, c: int = 2):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")]
    return model_from(nodes, [], [_vi("x", [1, c, h, w])], [_vi("y", [1, c, 1, 1])]), [1, c, h, w]


def test_global_average_pool_over_a_large_map_splits_in_two():
    m, shape = _gap(160, 160)  # PP-OCRv4 det's neck at 640: ceil(160/8)*160 = 3200 > bank_depth 2048
    checked = npuflow.check(m, DPU)  # judges the split, as compile lowers it: both parts on the DPU
    assert checked.node("gap").device == "NPU" and checked.node("gap/block").device == "NPU"
    assert "global_avg_pool_split" in " ".join(checked.node("gap").messages)
    out, done = target_rewrites(m, load_target(DPU))
    assert [(r.node, r.rewrite, r.applied) for r in done] == [("gap", "global_avg_pool_split", True)]
    ops = [(n.op_type, n.name) for n in out.graph.node]
    assert ops == [("Relu", "relu"), ("AveragePool", "gap/block"), ("GlobalAveragePool", "gap")]
    pool = out.graph.node[1]
    attrs = {a.name: list(a.ints) for a in pool.attribute}
    kh, kw = attrs["kernel_shape"]
    assert attrs["strides"] == [kh, kw] and 160 % kh == 0 and 160 % kw == 0 and kh * kw < 160 * 160
    # the block is the target's (bank_depth 2048, bank_num 8), not a constant: the largest that fits
    assert -(-kh // 8) * kw <= 2048 and kh * kw == 160 * 80
    _same_function(m, out, shape)
    placed = _placed(out, DPU)
    assert placed["gap/block"] == "NPU" and placed["gap"] == "NPU"


def test_global_average_pool_left_without_a_block_the_target_accepts():
    m, shape = _gap(257, 257, c=1)  # 257 is prime: a 1x257 or 257x1 window breaks the 256 range
    out, done = target_rewrites(m, load_target(DPU))
    assert [(r.node, r.applied) for r in done] == [("gap", False)] and "no block" in done[0].detail
    left = npuflow.check(m, DPU).node("gap")
    assert left.device == "CPU" and "257x257" in " ".join(left.reasons)
    assert [n.op_type for n in out.graph.node] == ["Relu", "GlobalAveragePool"]


def test_global_average_pool_unchanged_where_it_fits():
    small, _ = _gap(20, 20)
    out, done = target_rewrites(small, load_target(DPU))
    assert done == [] and out.SerializeToString() == small.SerializeToString()
    big, _ = _gap(160, 160)
    out, done = target_rewrites(big, load_target(CPU_TARGET))
    assert done == [] and out.SerializeToString() == big.SerializeToString()


def test_optimize_float_applies_them_only_with_a_target():
    m, shape = _se_block("Conv", 0.2, 0.5)
    plain = optimize_float(m)
    assert next(n for n in plain.graph.node if n.op_type == "HardSigmoid").attribute[0].f == pytest.approx(0.2)
    done: list = []
    opt = optimize_float(m, load_target(DPU), done)
    assert [r.node for r in done if r.applied] == ["hsig"]
    _same_function(m, opt, shape)


def test_quantize_reports_the_rewrites_and_places_them_on_the_dpu():
    m, shape = _se_block("Conv", 0.2, 0.5)
    calib = [{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(m, calib, target=DPU)
    rewrites = q.info["algorithms"]["target_rewrites"]
    assert [(r["node"], r["rewrite"], r["applied"]) for r in rewrites] == [("hsig", "hard_sigmoid_into_layer", True)]
    assert q.report.to_json() and {n.device for n in npuflow.check(q.float_model, DPU).nodes} == {"NPU"}
    q_cpu = npuflow.quantize(m, calib, target=CPU_TARGET)
    assert "target_rewrites" not in q_cpu.info.get("algorithms", {})


@pytest.mark.parametrize("case", ["hard_sigmoid", "global_avg_pool"])
def test_what_check_places_on_the_dpu_compile_lowers(case):
    """check judges the rewritten graph: one DPU subgraph, and compile's is one DPU subgraph equal to ONNX
    Runtime layer by layer (the SE gate's HardSigmoid(0.2, 0.5); a 160 x 160 map's GAP, as PP-OCRv4 det's)."""
    if case == "hard_sigmoid":
        m, shape = _se_block("Conv", 0.2, 0.5)
    else:  # Conv 1x1 -> ReLU -> GAP over 160 x 160 (a lone ReLU on the input stays on the CPU)
        shape = [1, 2, 160, 160]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")]
        m = model_from(nodes, [_f("w", rng.normal(0, 1, (2, 2, 1, 1)))], [_vi("x", shape)], [_vi("y", [1, 2, 1, 1])])
    report = npuflow.check(m, DPU)
    assert not report.cpu_nodes and report.summary["npu_subgraphs"] == 1
    assert_one_subgraph_equal_to_ort(m, shape, DPU, "DPU")
