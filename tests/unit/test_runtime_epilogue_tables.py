"""Float epilogues of convolutions (an activation chain fused into them) in the fused runs.

A convolution whose activation the compiler fuses as a float chain (the DPU's LeakyReLU,
hard-swish, hard-sigmoid) runs either as that chain's float32 operations or, where its scales are
per tensor, as one table of the integer accumulator (``fused_conv._acc_table``).  The table rests
on ``epilogues.chain_bounds`` (every value of the chain over an input range lies within them) and
must give the kernel's code for every accumulator a channel can hold; both forms are compared with
the op-by-op kernels bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import npuflow
from npuflow.runtime import fused, fused_conv, fused_graph
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, DPU, _x
from tests.unit.test_runtime_fused import MODES, _equal_fused_and_kernels, _fused_ops, _live_ops, _run


@pytest.mark.parametrize("act", ["leaky", "hardswish", "hardsigmoid"])
@pytest.mark.parametrize("target", [DPU, CPU])
def test_float_chain_epilogues_fuse_exactly(act, target):
    # a convolution with its activation fused as a float chain (the DPU's LeakyReLU 26/256,
    # PP-LCNet's hard-swish, the SE block's hard-sigmoid): the chain's float32 operations, one ONNX
    # node each, in the fused graph, equal the kernels' numpy evaluation bit for bit
    rng = np.random.default_rng(37)
    b = Builder("half_up" if target == DPU else "half_even")
    s = (lambda n: 2.0 ** -n) if target == DPU else (lambda n: 0.83 * 2.0 ** -n)
    x = b.input("x", [1, 8, 11, 13], s(5))
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), s(7))
    c = b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1])
    if act == "leaky":
        c = b.node("LeakyRelu", [c], "act", alpha=26 / 256)
    elif act == "hardswish":
        c = b.node("HardSwish", [c], "act")
    else:
        c = b.node("HardSigmoid", [c], "act", alpha=1 / 6, beta=0.5)
    b.output(b.quantize(c, s(4)), "out")
    compiled = npuflow.compile(b.model(), target)
    (conv,) = [op for sg in compiled.manifest["subgraphs"] for op in sg.get("ops", []) if op["op"] == "conv"]
    assert conv["attrs"]["epilogue"]["mode"] == "float" and conv["attrs"]["epilogue"]["chain"]
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 11, 13], 38, scale=3.0)}, target)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons



def _dpu_hswish(c3: float = 0.16668701171875) -> list[dict]:
    """The DPU's hard-swish as the compiler fuses it: x * (clip(x + 3, 0, 6) * 0.1667)."""
    return [{"op": "Add", "in": [{"t": "$x"}, {"c": 3.0}], "out": "a", "attrs": {}},
            {"op": "Clip", "in": [{"t": "a"}, {"c": 0.0}, {"c": 6.0}], "out": "b", "attrs": {}},
            {"op": "Mul", "in": [{"t": "b"}, {"c": c3}], "out": "g", "attrs": {}},
            {"op": "Mul", "in": [{"t": "$x"}, {"t": "g"}], "out": "y", "attrs": {}}]


CHAINS = {
    "dpu_hardswish": (_dpu_hswish(), "y"),
    "dpu_hardsigmoid": (_dpu_hswish()[:3], "g"),
    "hardswish": ([{"op": "HardSwish", "in": [{"t": "$x"}], "out": "y", "attrs": {}}], "y"),
    "hardsigmoid": ([{"op": "HardSigmoid", "in": [{"t": "$x"}], "out": "y", "attrs": {"alpha": 0.2, "beta": 0.5}}],
                    "y"),
    "leaky": ([{"op": "LeakyRelu", "in": [{"t": "$x"}], "out": "y", "attrs": {"alpha": 26 / 256}}], "y"),
    "relu6_scaled": ([{"op": "Relu", "in": [{"t": "$x"}], "out": "r", "attrs": {}},
                      {"op": "Clip", "in": [{"t": "r"}], "out": "c", "attrs": {"max": 6.0}},
                      {"op": "Sub", "in": [{"t": "c"}, {"c": 1.5}], "out": "s", "attrs": {}},
                      {"op": "Div", "in": [{"t": "s"}, {"c": -3.0}], "out": "y", "attrs": {}}], "y"),
    "square": ([{"op": "Mul", "in": [{"t": "$x"}, {"t": "$x"}], "out": "y", "attrs": {}}], "y"),
    "none": ([], "$x"),
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_chain_bounds_contain_every_value_of_the_chain(chain):
    # the proof behind accumulator tables: every float32 result of the chain over an input range
    # lies within the bounds chain_bounds gives for that range
    from npuflow.runtime.epilogues import chain_bounds, eval_chain
    steps, result = CHAINS[chain]
    rng = np.random.default_rng(41)
    for _ in range(200):
        lo, hi = np.sort(rng.choice([rng.normal(0, 4), rng.normal(0, 40), rng.integers(-8, 8) / 2.0], 2))
        v = np.concatenate([[lo, hi], np.linspace(lo, hi, 2001), rng.uniform(lo, hi, 500)]).astype(np.float32)
        v = v[(v >= np.float32(lo)) & (v <= np.float32(hi))]
        got = eval_chain(v, steps, result) if steps else v
        b = chain_bounds(steps, result, lo, hi)
        assert b is not None and b[0] <= got.min() and got.max() <= b[1], (chain, lo, hi, b, got.min(), got.max())


def _acc_codes(ep: dict, reach: int, bias: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every accumulator ``bias - reach .. bias + reach`` of a one-tap convolution (its tap
    ``acc - bias`` is the graph input), the fused accumulator table's codes for them, and the
    table (``None``: no table)."""
    g = fused_graph.Graph({})
    w = np.ones((1, 1, 1, 1))

    def emit(x: str, wc: np.ndarray, b: np.ndarray | None) -> str:
        return g.node("Add", [x, g.const(np.float32(b[0]))])

    found = fused_conv._acc_table(g, "x", w, np.array([bias]), reach, ep, emit)
    acc = np.arange(bias - reach, bias + reach + 1).astype(np.int64)
    if found is None:
        return acc, None, None
    index, table = found
    y = fused_graph.lookup(g, index, table, int(ep["zp"]))
    return acc, _run(g, y, {"x": (acc - bias).astype(np.float32)}, TensorProto.FLOAT) + ep["zp"], table


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("acc_scale,scale,dtype,zp", [(2.0 ** -6, 0.5, "int8", 0), (2.0 ** -11, 2.0 ** -4, "int8", -3),
                                                       (0.00731, 0.0417, "uint8", 131), (2.0 ** -3, 4.0, "int8", 0)])
def test_accumulator_table_gives_the_epilogues_code_for_every_accumulator(chain, mode, acc_scale, scale, dtype, zp):
    # a float epilogue (chain and quantize step) as a table of the accumulator, saturated runs
    # below a0 and above a1 found by bounds: equal to the kernel's epilogue on every accumulator
    # the channel can hold
    from npuflow.runtime.epilogues import make_epilogue
    steps, result = CHAINS[chain]
    ep = {"mode": "float", "acc_scale": acc_scale, "scale": scale, "zp": zp, "round": mode, "dtype": dtype,
          "chain": steps, "result": result}
    acc, got, table = _acc_codes(ep, 40000, 517.0)
    want = make_epilogue(ep, 0, 1)(acc)
    assert table is not None and table.size < acc.size
    assert np.array_equal(got, want.astype(np.float32)), int(np.sum(got != want))


def test_accumulator_tables_only_where_they_are_small_and_per_tensor():
    ep = {"mode": "float", "acc_scale": 2.0 ** -16, "scale": 2.0 ** -3, "zp": 0, "round": "half_up", "dtype": "int8",
          "chain": CHAINS["dpu_hardswish"][0], "result": "y"}
    assert _acc_codes(ep, 1 << 22, 0.0)[2] is None  # 2^13 accumulators per code step: 2 million entries
    assert _acc_codes({**ep, "acc_scale": 2.0 ** -9}, 1 << 22, 0.0)[2].size <= fused_conv.ACC_TABLE_LIMIT
    g = fused_graph.Graph({})
    per_channel = {**ep, "acc_scale": [2.0 ** -9, 2.0 ** -10]}
    assert fused_conv._acc_table(g, "x", np.ones((2, 1, 1, 1)), np.zeros(2), 100, per_channel, None) is None


def test_hard_swish_conv_and_its_affine_block_are_one_accumulator_table():
    # PP-LCNetV3 on the DPU: conv with the hard-swish fused as a float chain, then the learnable
    # affine block (one-value scale and offset): one table of the convolution's accumulator
    rng = np.random.default_rng(43)
    b = Builder("half_up")
    x = b.input("x", [1, 8, 11, 13], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    c = b.quantize(b.node("HardSwish", [b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1])], "act"), 2.0 ** -4)
    k = b.weight("k", np.array([0.77], np.float32), 2.0 ** -7)
    a = b.quantize(b.node("Mul", [b.dq(c), k], "scale"), 2.0 ** -4)
    o = b.weight("o", np.array([-0.3], np.float32), 2.0 ** -7)
    b.output(b.quantize(b.node("Add", [b.dq(a), o], "offset"), 2.0 ** -4), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 11, 13], 44, scale=3.0)}, DPU)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons
    ops = _live_ops(next(it for it in plan.items if isinstance(it, fused.FusedRun)))
    conv = "ConvInteger" if "ConvInteger" in ops else "Conv"  # the integer form where this CPU's is exact
    after = ops[ops.index(conv):]  # (before it: the float input's quantize step)
    assert after.count("GatherElements") == 1 and "Floor" not in after and "Div" not in after, ops
