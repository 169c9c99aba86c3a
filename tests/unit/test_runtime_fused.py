"""The fused runs (runtime/fused.py) against the op-by-op kernels, bit for bit.

A fused run writes consecutive integer ops as one ONNX Runtime graph of exact float (and int64)
operations.  These tests pin the rounding recipes to ``numerics`` over whole input ranges (ties,
negative ties, large values), and compare ``Session(fuse=True)`` with ``Session(fuse=False)`` on
small models that reach the edge cases: long reductions that need chunks, 16-bit inputs,
negative ties, saturation, per-channel float scales, batch > 1 with two threads.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import onnx
from onnx import TensorProto, helper

import npuflow
from npuflow import numerics as nm
from npuflow.runtime import fused, fused_conv, fused_fixed, fused_graph, fused_tables
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, DPU, _conv_model, _x

MODES = ["half_up", "half_even", "half_down"]


def _run(g: fused_graph.Graph, out: str, feeds: dict[str, np.ndarray], out_type: int) -> np.ndarray:
    """Run the nodes of ``g`` with raw graph inputs ``feeds`` and return ``out``."""
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    graph = helper.make_graph(g.nodes, "t", inputs, [helper.make_tensor_value_info(out, out_type, None)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    if g.arrays:  # the large constants, declared external in g.inits
        opts.add_external_initializers(list(g.arrays), [ort.OrtValue.ortvalue_from_numpy(v) for v in g.arrays.values()])
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=fused.DISABLED_OPTIMIZERS)
    return sess.run([out], feeds)[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shift", [1, 2, 7])
def test_tie_offsets_round_every_grid_value_as_numerics(mode, shift):
    # every accumulator of 15 bits and sign on the grid 2^-shift, ties and negative ties included
    acc = np.arange(-(1 << 15), 1 << 15)
    v = (acc * 2.0 ** -shift).astype(np.float32)
    want = nm.shift_round(acc, shift, mode)
    g = fused_graph.Graph({})
    y = g.node("Round", [g.node("Add", ["x", g.const(nm.rounding_as_nearest_even(mode, shift))])])
    assert np.array_equal(_run(g, y, {"x": v}, TensorProto.FLOAT), want)
    offset, op = nm.rounding_as_onnx(mode)
    g = fused_graph.Graph({})
    y = g.node(op, [g.node("Add", ["x", g.const(offset, np.float64)])])
    assert np.array_equal(_run(g, y, {"x": v.astype(np.float64)}, TensorProto.DOUBLE), want)


def _float32_near_ties() -> np.ndarray:
    """float32 values where a tie rule can go wrong: every half-integer below 300 and its two
    neighbours, 0.49999997 (whose ``+ 0.5`` rounds to 1 in float32), subnormals, huge values,
    infinities, and random values."""
    ties = (np.arange(-300, 300) + 0.5).astype(np.float32)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    tiny = np.finfo(np.float32).tiny
    edges = np.array([0.0, -0.0, 0.49999997, -0.49999997, tiny, -tiny, tiny / 8, -tiny / 8, 2.0 ** 23 + 1, -2.0 ** 23 - 1,
                      1e30, -1e30, 3e38, -3e38, np.inf, -np.inf], np.float32)
    rng = np.random.default_rng(3)
    return np.concatenate([near, edges, (rng.standard_normal(4000) * 200).astype(np.float32)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zp", [0, -7])
def test_float32_rounding_by_doubling_equals_numerics(mode, zp):
    # round_float in float32 alone (no float64 pass), with the doubling as a node or folded into a constant
    v = _float32_near_ties()
    lo, hi = -128, 127
    ep = {"round": mode, "zp": zp}

    def codes(y: np.ndarray) -> np.ndarray:
        return np.clip(nm.round_values(y, mode).astype(np.float64) + zp, lo, hi)

    g = fused_graph.Graph({})
    y, off = fused_graph.round_float(g, "x", ep, lo, hi)
    assert "Cast" not in {n.op_type for n in g.nodes}
    assert np.array_equal(_run(g, y, {"x": v}, TensorProto.FLOAT) + off, codes(v))
    x = v[np.isfinite(v) & (np.abs(v) < 1e6)]
    for op, c in [("Mul", np.float32(0.37)), ("Div", np.float32(0.0171)), ("Mul", np.float32(3e38)),
                  ("Mul", np.float32(np.finfo(np.float32).tiny / 4)), ("Div", np.float32(np.finfo(np.float32).tiny))]:
        g = fused_graph.Graph({})
        y, off = fused_graph.round_scaled(g, "x", op, c, ep, lo, hi)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            want = codes(x * c if op == "Mul" else x / c)
        assert np.array_equal(_run(g, y, {"x": x}, TensorProto.FLOAT) + off, want), (op, c)


@pytest.mark.parametrize("mode", MODES)
def test_int64_shift_round_equals_numerics_to_2_62(mode):
    rng = np.random.default_rng(0)
    shifts = np.arange(64)
    ties = np.array([[(2 * k + 1) << max(s - 1, 0) if abs(2 * k + 1) << max(s - 1, 0) < 1 << 62 else 0
                      for s in range(64)] for k in range(-3, 3)], np.int64)
    big = rng.integers(-(1 << 62), 1 << 62, size=(40, 64), dtype=np.int64)
    small = rng.integers(-5000, 5000, size=(40, 64), dtype=np.int64)
    v = np.concatenate([ties, -ties, big, small, np.zeros((1, 64), np.int64)])
    g = fused_graph.Graph({})
    y = fused_fixed._shift_round_int64(g, "x", mode, shifts.reshape(1, 64))
    want = nm.shift_round(v, shifts.reshape(1, 64), mode)
    assert np.array_equal(_run(g, y, {"x": v}, TensorProto.INT64), want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zp", [0, -7])
@pytest.mark.parametrize("shifts,as_float", [([30, 33, 36, 38, 40, 41, 42, 42], True),   # the float64 form
                                             ([30, 38, 42, 44, 45, 50, 60, 70], False)])  # int64 shifts
def test_fixed_point_requantisation_equals_numerics(mode, zp, shifts, as_float):
    rng = np.random.default_rng(1)
    cout = len(shifts)
    mult = rng.integers(1 << 30, 1 << 31, cout)
    shift = np.array(shifts)
    near_ties = np.round(((np.arange(-40, 40) + 0.5)[:, None] * np.exp2(shift) / mult))
    acc = np.concatenate([rng.integers(-(1 << 23), 1 << 23, (64, cout)), near_ties, near_ties + 1, near_ties - 1])
    acc = np.clip(acc, -(1 << 23), 1 << 23).astype(np.int64).reshape(-1, cout, 1, 1)
    ep = {"mode": "fixed", "multiplier": mult.tolist(), "shift": shift.tolist(), "zp": zp, "round": mode,
          "dtype": "int8", "clamps": []}
    want = np.clip(nm.requantize_fixed_point(acc, mult.reshape(1, cout, 1, 1), shift.reshape(1, cout, 1, 1), mode)
                   + zp, -128, 127)
    g = fused_graph.Graph({})
    fx = fused_fixed.FixedPoint(ep, cout, np.full(cout, -float(1 << 23)), np.full(cout, float(1 << 23)))
    y, off = fused_fixed.requantize_fixed(g, "x", False, fx, ep, -128, 127)
    assert ("BitShift" not in {n.op_type for n in g.nodes}) is as_float and off == zp  # held centred
    assert np.array_equal(_run(g, y, {"x": acc.astype(np.float32)}, TensorProto.FLOAT) + off, want)


@pytest.mark.parametrize("mode", MODES)
def test_fixed_point_in_float32_where_numerics_proves_it_exact(mode):
    # shifts up to 39 (reach 2^16): float32 multipliers, no float64 pass, every accumulator of the
    # range through ONNX Runtime equal to numerics; one shift-44 channel (reach 2^21) with
    # accumulators to 2^23 sends the whole tensor back to the wide product (float64 or int64)
    rng = np.random.default_rng(11)
    mult, shift = rng.integers(1 << 30, 1 << 31, 4), np.array([31, 35, 38, 39])
    ep = {"mode": "fixed", "multiplier": mult.tolist(), "shift": shift.tolist(), "zp": -128, "round": mode,
          "dtype": "int8", "clamps": [[-128, 90]]}
    bound = float(1 << 18)
    acc = np.repeat(np.arange(-(1 << 18), 1 << 18)[:, None], 4, axis=1).reshape(-1, 4, 1, 1)
    want = np.clip(nm.requantize_fixed_point(acc, mult.reshape(1, 4, 1, 1), shift.reshape(1, 4, 1, 1), mode)
                   - 128, -128, 90)
    g = fused_graph.Graph({})
    y, off = fused_fixed.requantize_fixed(g, "x", False, fused_fixed.FixedPoint(ep, 4, np.full(4, -bound), np.full(4, bound)),
                                     ep, -128, 90)
    assert [n.op_type for n in g.nodes if n.op_type != "Add"] == ["Mul", nm.rounding_as_onnx(mode)[1], "Clip"]
    assert np.array_equal(_run(g, y, {"x": acc.astype(np.float32)}, TensorProto.FLOAT) + off, want)
    ep = {**ep, "shift": [31, 35, 38, 44]}
    g = fused_graph.Graph({})
    wide = float(1 << 23)
    fused_fixed.requantize_fixed(g, "x", False, fused_fixed.FixedPoint(ep, 4, np.full(4, -wide), np.full(4, wide)), ep, -128, 90)
    assert "Cast" in {n.op_type for n in g.nodes}


@pytest.mark.parametrize("mode", MODES)
def test_fixed_point_saturates_unclamped_accumulators_far_beyond_reach(mode):
    # float64 accumulators (chunked sums) up to 2^30: products of 61 bits round, yet saturate as numerics does
    rng = np.random.default_rng(7)
    mult, shift = rng.integers(1 << 30, 1 << 31, 4), np.array([31, 33, 35, 37])
    reach = np.round(128 * np.exp2(shift) / mult)
    acc = np.concatenate([rng.integers(-(1 << 30), 1 << 30, (64, 4)), reach + np.arange(-3, 4)[:, None],
                          -reach + np.arange(-3, 4)[:, None]]).astype(np.int64).reshape(-1, 4, 1, 1)
    ep = {"mode": "fixed", "multiplier": mult.tolist(), "shift": shift.tolist(), "zp": 3, "round": mode,
          "dtype": "int8", "clamps": []}
    want = np.clip(nm.requantize_fixed_point(acc, mult.reshape(1, 4, 1, 1), shift.reshape(1, 4, 1, 1), mode) + 3,
                   -128, 127)
    g = fused_graph.Graph({})
    fx = fused_fixed.FixedPoint(ep, 4, np.full(4, -float(1 << 30)), np.full(4, float(1 << 30)))
    y, off = fused_fixed.requantize_fixed(g, "x", True, fx, ep, -128, 127)
    assert not {"Min", "Max", "BitShift"} & {n.op_type for n in g.nodes}
    assert np.array_equal(_run(g, y, {"x": acc.astype(np.float64)}, TensorProto.FLOAT) + off, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("const_in_acc", [False, True])
def test_near_dead_channels_are_constants_and_live_ones_exact(mode, const_in_acc):
    # a saturated int32 bias with a tiny multiplier (60, 70: beyond float64's reach) next to live channels
    mult = np.array([1 << 30, 1518500250, 2147483647, 1 << 30])
    shift = np.array([40, 60, 70, 38])
    bias = np.array([0, (1 << 31) - 1, -(1 << 31), 1000])
    sums = np.full(4, 1 << 17)
    acc = np.stack([bias + d for d in (-sums[0], -7, 0, 5, sums[0])]).reshape(-1, 4, 1, 1).astype(np.int64)
    acc = np.concatenate([acc, np.random.default_rng(2).integers(-(1 << 17), 1 << 17, (50, 4, 1, 1)) + bias.reshape(1, 4, 1, 1)])
    ep = {"mode": "fixed", "multiplier": mult.tolist(), "shift": shift.tolist(), "zp": 3, "round": mode,
          "dtype": "int8", "clamps": []}
    g = fused_graph.Graph({})
    fx = fused_fixed.FixedPoint(ep, 4, (bias - sums).astype(np.float64), (bias + sums).astype(np.float64))
    assert list(fx.const) == [False, True, True, False]
    y, off = fused_fixed.requantize_fixed(g, "x", True, fx, ep, -128, 127, const_in_acc=const_in_acc)
    assert "BitShift" not in {n.op_type for n in g.nodes}
    want = np.clip(nm.requantize_fixed_point(acc, mult.reshape(1, 4, 1, 1), shift.reshape(1, 4, 1, 1), mode) + 3,
                   -128, 127)
    if const_in_acc:  # the convolution gives a constant channel no taps and its value as bias
        acc = np.where(fx.const.reshape(1, 4, 1, 1), fx.value.reshape(1, 4, 1, 1), acc)
        # ties to even: nothing but the multiply and the rounding before the float32 clamp
        assert mode != "half_even" or [n.op_type for n in g.nodes] == ["Mul", "Round", "Cast", "Clip"]
    assert np.array_equal(_run(g, y, {"x": acc.astype(np.float64)}, TensorProto.FLOAT) + off, want)


def _equal_fused_and_kernels(model, feeds: dict, target: str, **session) -> fused.Plan:
    """Outputs and every dumped integer tensor equal between the fused runs and the kernels."""
    compiled = npuflow.compile(model, target)
    fast, ref = npuflow.Session(compiled, **session), npuflow.Session(compiled, fuse=False)
    a, b = fast.run(feeds), ref.run(feeds)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    plans = [ex.plan for ex in fast._executors if hasattr(ex, "plan")]
    return plans[0]


def _live_ops(run: fused.FusedRun) -> list[str]:
    """The op types ``run``'s outputs depend on, in graph order."""
    g = run.graph()
    return [n.op_type for n in fused_graph.live(g.nodes, g.inits, [g.names.get(t, t) for t in run.outputs])[0]]


def _fused_ops(plan: fused.Plan) -> int:
    return sum(1 for it in plan.items if isinstance(it, fused.FusedRun))


@pytest.mark.parametrize("target,per_channel", [(DPU, False), (CPU, True)])
def test_long_reduction_needs_chunks_and_stays_exact(target, per_channel):
    # 3x3x256 products of saturated codes: beyond 2^24, summed in float64 chunks inside the graph
    model = _conv_model("half_up", None, cin=256, cout=4, pow2=target == DPU, per_channel=per_channel)
    plan = _equal_fused_and_kernels(model, {"x": _x([1, 256, 13, 11], 4, scale=8.0)}, target)
    assert _fused_ops(plan) == 1 and not plan.reasons.get(1), plan.reasons


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [0.05, 1.0, 40.0])  # tiny values, everyday ones, saturation
def test_conv_float_scales_per_channel_is_exact(mode, scale):
    model = _conv_model(mode, "relu6", pow2=False, per_channel=True)
    plan = _equal_fused_and_kernels(model, {"x": _x([1, 8, 13, 11], 5, scale)}, CPU)
    assert _fused_ops(plan) == 1


def _add_model(mode: str, dtype: str = "int8", zp: int = 0):
    """Two inputs on 2^-5 added and requantised to 2^-4: a shift of 1, half of all sums are ties."""
    b = Builder(mode)
    x, y = b.input("x", [1, 4, 8, 8], 2.0 ** -5, zp, dtype), b.input("y", [1, 4, 8, 8], 2.0 ** -5, zp, dtype)
    s = b.node("Add", [b.dq(x), b.dq(y)], "add")
    b.output(b.quantize(s, 2.0 ** -4, zp, dtype), "out")
    return b.model()


@pytest.mark.parametrize("mode", MODES)
def test_negative_ties_and_saturation_of_an_add(mode):
    rng = np.random.default_rng(2)
    feeds = {k: (rng.integers(-140, 140, (1, 4, 8, 8)) / 32).astype(np.float32) for k in ("x", "y")}
    plan = _equal_fused_and_kernels(_add_model(mode), feeds, DPU)
    assert _fused_ops(plan) == 1


def test_16_bit_inputs_run_as_kernels_and_say_why():
    b = Builder("half_up", opset=21)  # int16 Q/DQ
    rng = np.random.default_rng(3)
    x = b.input("x", [1, 8, 9, 9], 2.0 ** -8, 0, "int16")
    w = b.weight("w", rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    c = b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1])
    b.output(b.quantize(c, 2.0 ** -3), "out")
    compiled = npuflow.compile(b.model(), CPU)
    feeds = {"x": _x([1, 8, 9, 9], 6, scale=60.0)}
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    a, r = fast.run(feeds), ref.run(feeds)
    assert all(np.array_equal(a[k], r[k]) for k in a)
    plans = [ex.plan for ex in fast._executors if hasattr(ex, "plan")]
    assert any("16-bit" in why for p in plans for why in p.reasons.values()), [p.reasons for p in plans]


def test_batch_of_four_on_two_threads_equals_kernels():
    b = Builder("half_up")
    rng = np.random.default_rng(4)
    x = b.input("x", [4, 8, 13, 11], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    c = b.node("Relu", [b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1])], "act")
    b.output(b.quantize(c, 2.0 ** -3), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([4, 8, 13, 11], 7, scale=2.0)}, DPU, threads=2)
    assert _fused_ops(plan) == 1


def _silu_model(mode: str = "half_up"):
    """Conv -> SiLU: the DPU has no sigmoid, so ``DQ -> Sigmoid -> Q`` is a CPU subgraph."""
    b = Builder(mode)
    rng = np.random.default_rng(5)
    x = b.input("x", [1, 8, 16, 16], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1]), 2.0 ** -4)
    s = b.quantize(b.node("Sigmoid", [b.dq(c)], "sig"), 2.0 ** -7)
    b.output(b.quantize(b.node("Mul", [b.dq(c), b.dq(s)], "silu"), 2.0 ** -4), "out")
    return b.model()


def test_elementwise_cpu_subgraph_runs_as_its_own_table():
    compiled = npuflow.compile(_silu_model(), DPU)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    program = fast._programs[0]
    tables = [program.executor(k) for k, sg in enumerate(program.subgraphs) if sg["engine"] != "integer"]
    assert tables and all(ex.lookup is not None for ex in tables)
    assert not any(getattr(ex, "lookup", None) is not None for ex in ref._executors)
    for seed in range(3):
        feeds = {"x": _x([1, 8, 16, 16], seed, scale=3.0)}
        a, b = fast.run(feeds), ref.run(feeds)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_subgraph_mixing_positions_is_not_a_table():
    from npuflow.runtime.executors import _as_lookup

    x = helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4, 16, 16])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    for body in ([helper.make_node("Transpose", ["d"], ["t"], perm=[0, 1, 3, 2])],  # moves elements
                 [helper.make_node("Neg", ["d"], ["t"])]):                        # elementwise: a table
        nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["d"]), *body,
                 helper.make_node("QuantizeLinear", ["t", "s", "z"], ["y"])]
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                  opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        table = _as_lookup(model, sess)
        assert (table is None) == (body[0].op_type == "Transpose")
        if table is not None:
            q = np.random.default_rng(0).integers(-128, 128, (1, 4, 16, 16)).astype(np.int8)
            assert np.array_equal(table({"x": q})["y"], sess.run(None, {"x": q})[0])


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1)])  # zero point folded into the bias, or subtracted
def test_asymmetric_input_zero_point_is_exact(pads):
    b = Builder("half_even")
    rng = np.random.default_rng(6)
    x = b.input("x", [1, 8, 11, 11], 0.05, -3)
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), np.linspace(0.004, 0.01, 16), axis=0)
    c = b.node("Conv", [b.dq(x), w], "conv", pads=list(pads))
    b.output(b.quantize(c, 0.07, 5), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 11, 11], 8, scale=4.0)}, CPU)
    assert _fused_ops(plan) == 1


@pytest.mark.parametrize("target,group,pads,out_pad", [(DPU, 1, [1, 1, 1, 1], [1, 1]), (CPU, 1, [0, 0, 0, 0], [0, 0]),
                                                      (CPU, 2, [1, 0, 1, 0], [0, 0])])
def test_conv_transpose_and_global_average_fuse_exactly(target, group, pads, out_pad):
    rng = np.random.default_rng(9)
    b = Builder("half_even" if target == CPU else "half_up")
    s = 2.0 ** -4 if target == DPU else 0.061
    x = b.input("x", [1, 4, 5, 6], s)
    w = b.weight("w", rng.normal(0, 0.3, (4, 6 // group, 3, 3)).astype(np.float32), 2.0 ** -7 if target == DPU else 0.0093)
    y = b.quantize(b.node("ConvTranspose", [b.dq(x), w], "ct", strides=[2, 2], pads=pads, output_padding=out_pad,
                          group=group), 2.0 ** -3 if target == DPU else 0.117)
    b.output(b.quantize(b.node("GlobalAveragePool", [b.dq(y)], "gap"), 2.0 ** -5 if target == DPU else 0.029), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 4, 5, 6], 10, scale=2.0)}, target)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons


def test_transposed_output_beyond_its_reach_runs_as_kernel():
    # output_padding past the last tap: the kernel's zeros (plus bias), not a ConvTranspose output
    rng = np.random.default_rng(11)
    b = Builder("half_up")
    x = b.input("x", [1, 4, 5, 6], 2.0 ** -4)
    w = b.weight("w", rng.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32), 2.0 ** -7)
    y = b.node("ConvTranspose", [b.dq(x), w, b.bias("b", rng.normal(0, 1, 6), 2.0 ** -11)], "ct",
               strides=[2, 2], output_padding=[1, 1])
    b.output(b.quantize(y, 2.0 ** -3), "y")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 4, 5, 6], 12, scale=2.0)}, DPU)
    assert any("reach" in why for why in plan.reasons.values()), plan.reasons


@pytest.mark.parametrize("sizes,table", [([1, 8, 14, 22], False),   # integer factors: Resize
                                         ([1, 8, 14, 22], True),    # and a scale-change table
                                         ([1, 8, 10, 17], True)])   # 7 -> 10, 11 -> 17: Gather
def test_nearest_resize_and_its_table_fuse_exactly(sizes, table):
    rng = np.random.default_rng(13)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 7, 11], 0.043)
    w = b.weight("w", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), 0.0081)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv"), 0.052)
    r = b.node("Resize", [b.dq(c), "", "", b.const("sizes", np.array(sizes, np.int64))], "up", mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    y = b.quantize(r, 0.071 if table else 0.052)
    b.output(b.quantize(b.node("Add", [b.dq(y), b.dq(y)], "add"), 0.09), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 7, 11], 14, scale=2.0)}, CPU)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons
    ops = [n.op_type for it in plan.items if isinstance(it, fused.FusedRun) for n in it.graph().nodes]
    # y + y is a table of y (fused_tables.as_table); the resize's scale change one more
    assert ("Resize" in ops) == (sizes[2] % 7 == 0) and ops.count("GatherElements") == 1 + table, ops


def test_split_and_side_by_side_elementwise_outputs_are_tables():
    from npuflow.runtime.executors import _as_lookup

    def model(body: list, outputs: list[str], inputs=("x",)):
        ins = [helper.make_tensor_value_info(n, TensorProto.INT8, [1, 8, 32, 32]) for n in inputs]
        outs = [helper.make_tensor_value_info(o, TensorProto.INT8, None) for o in outputs]
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("z", TensorProto.INT8, [], [0]),
                 helper.make_tensor("t", TensorProto.FLOAT, [], [0.0041]),
                 helper.make_tensor("sizes", TensorProto.INT64, [2], [3, 5])]
        m = helper.make_model(helper.make_graph(body, "g", ins, outs, inits), opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
        return m, ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    dq = lambda x, y: helper.make_node("DequantizeLinear", [x, "s", "z"], [y])
    q = lambda x, y, s="s": helper.make_node("QuantizeLinear", [x, s, "z"], [y])
    cases = {  # C2f's Split between quantize steps (a rescale on one side); two sigmoids side by side; a mix
        "split": ([dq("x", "d"), helper.make_node("Split", ["d", "sizes"], ["a", "b"], axis=1), q("a", "ya"),
                   q("b", "yb", "t")], ["ya", "yb"], ("x",), True),
        "pair": ([dq("x", "dx"), dq("w", "dw"), helper.make_node("Sigmoid", ["dx"], ["sx"]),
                  helper.make_node("Sigmoid", ["dw"], ["sw"]), q("sx", "yx", "t"), q("sw", "yw", "t")],
                 ["yx", "yw"], ("x", "w"), True),
        "two inputs": ([dq("x", "dx"), dq("w", "dw"), helper.make_node("Add", ["dx", "dw"], ["a"]), q("a", "y")],
                       ["y"], ("x", "w"), False),
        "split and concat": ([dq("x", "d"), helper.make_node("Split", ["d", "sizes"], ["a", "b"], axis=1),
                              helper.make_node("Concat", ["b", "a"], ["c"], axis=1), q("c", "y")], ["y"], ("x",), False),
    }
    rng = np.random.default_rng(15)
    for name, (body, outputs, inputs, is_table) in cases.items():
        m, sess = model(body, outputs, inputs)
        table = _as_lookup(m, sess)
        assert (table is not None) == is_table, name
        if table is not None:
            feeds = {n: rng.integers(-128, 128, (1, 8, 32, 32)).astype(np.int8) for n in inputs}
            got = table(feeds)
            for o, want in zip(outputs, sess.run(outputs, feeds)):
                assert np.array_equal(got[o], want), (name, o)


def _silu_affine_model(dtype: str, zp: int) -> "onnx.ModelProto":
    """conv -> SiLU (sigmoid table, Mul of the table's input and output) -> a one-value scale and
    offset (PP-LCNet's learnable affine block) -> conv, on float scales."""
    rng = np.random.default_rng(21)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 9, 10], 0.043, zp, dtype)
    w = b.weight("w", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), 0.0081)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1]), 0.061, zp, dtype)
    s = b.quantize(b.node("Sigmoid", [b.dq(c)], "sig"), 1 / 256, -128 if dtype == "int8" else 0, dtype)
    m = b.quantize(b.node("Mul", [b.dq(c), b.dq(s)], "silu"), 0.033, zp, dtype)
    k = b.weight("k", np.array([0.77], np.float32), 0.0061)
    a = b.quantize(b.node("Mul", [b.dq(m), k], "scale"), 0.027, zp, dtype)
    o = b.weight("o", np.array([-0.3], np.float32), 0.0025)
    y = b.quantize(b.node("Add", [b.dq(a), o], "offset"), 0.029, zp, dtype)
    w2 = b.weight("w2", rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), 0.011)
    b.output(b.quantize(b.node("Conv", [b.dq(y), w2], "conv2"), 0.05, zp, dtype), "out")
    return b.model()


@pytest.mark.parametrize("dtype,zp", [("int8", 0), ("uint8", 128)])
def test_silu_and_affine_chain_become_one_table_exactly(dtype, zp, tmp_path):
    # sigmoid table, x * sigmoid(x), * const, + const: four elementwise functions of the conv's codes
    model = _silu_affine_model(dtype, zp)
    feeds = {"x": _x([1, 8, 9, 10], 22, scale=2.0)}
    plan = _equal_fused_and_kernels(model, feeds, CPU)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons
    ops = _live_ops(next(it for it in plan.items if isinstance(it, fused.FusedRun)))
    # the input's quantize step: a float division (int8), ONNX Runtime's QuantizeLinear (uint8)
    assert ops.count("GatherElements") == 1 and ops.count("Div") + ops.count("QuantizeLinear") == 1, ops
    # dump mode still computes every intermediate tensor, equal to the kernels'
    compiled = npuflow.compile(model, CPU)
    npuflow.Session(compiled).run(feeds, dump_dir=tmp_path / "fused")
    npuflow.Session(compiled, fuse=False).run(feeds, dump_dir=tmp_path / "kernels")
    names = sorted(p.name for p in (tmp_path / "kernels").glob("*.npy"))
    assert len(names) >= 6 and names == sorted(p.name for p in (tmp_path / "fused").glob("*.npy"))
    for n in names:
        assert np.array_equal(np.load(tmp_path / "fused" / n), np.load(tmp_path / "kernels" / n)), n


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zp", [-7, -8, 5])
def test_fixed_point_output_is_centred_on_its_zero_point(mode, zp):
    # exact ties (m = 2^30 at shift 31: every odd accumulator; 3 * 2^28 at shift 33) and odd zero
    # points: the zero point is never added to the rounded value, the readers take codes - zp
    mult, shift = np.array([1 << 30, 3 << 28, 1518500251]), np.array([31, 33, 40])
    acc = np.concatenate([np.arange(-1200, 1200), np.random.default_rng(3).integers(-(1 << 23), 1 << 23, 300)])
    acc = np.repeat(acc[:, None], 3, axis=1).reshape(-1, 3, 1, 1).astype(np.int64)
    ep = {"mode": "fixed", "multiplier": mult.tolist(), "shift": shift.tolist(), "zp": zp, "round": mode,
          "dtype": "int8", "clamps": [[-100, 120]]}
    want = np.clip(nm.requantize_fixed_point(acc, mult.reshape(1, 3, 1, 1), shift.reshape(1, 3, 1, 1), mode) + zp,
                   -100, 120)
    g = fused_graph.Graph({})
    fx = fused_fixed.FixedPoint(ep, 3, np.full(3, -float(1 << 23)), np.full(3, float(1 << 23)))
    y, off = fused_fixed.requantize_fixed(g, "x", False, fx, ep, -100, 120)
    assert off == zp and [n.op_type for n in g.nodes].count("Add") == (mode != "half_even")  # the tie offset only
    assert np.array_equal(_run(g, y, {"x": acc.astype(np.float32)}, TensorProto.FLOAT) + off, want)


@pytest.mark.parametrize("dtype,zp,value", [("int8", -128, 0.0), ("uint8", 3, 0.0), ("int8", -128, 0.5)])
def test_pad_of_the_zero_point_becomes_the_convolutions_padding(dtype, zp, value):
    # conv -> ReLU6-like clip (zero point -128) -> TF-style asymmetric Pad -> depthwise conv: the
    # conv output is held centred, so padding it with its zero point is the depthwise conv's own
    # zero padding; any other pad value stays a Pad
    rng = np.random.default_rng(23)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043)
    w = b.weight("w", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), 0.0081)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv"), 0.03, zp, dtype)
    p = b.quantize(b.node("Pad", [b.dq(c), b.const("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)),
                                  b.const("v", np.float32(value))], "pad"), 0.03, zp, dtype)
    k = b.weight("k", rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), 0.0093)
    b.output(b.quantize(b.node("Conv", [b.dq(p), k], "depthwise", group=8, strides=[2, 2]), 0.05, 0), "out")
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([1, 8, 12, 12], 24, scale=2.0)}, CPU)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons
    ops = _live_ops(next(it for it in plan.items if isinstance(it, fused.FusedRun)))
    # each convolution (fixed point) one kernel: QLinearConv where float32 multipliers are exact,
    # else ConvInteger (dense) or a float Conv (depthwise)
    kernels = ("Conv", "ConvInteger", "QLinearConv")
    assert ("Pad" in ops) == bool(value) and sum(map(ops.count, kernels)) == 2, ops
    if not value:  # and no pass for the zero point: conv, requantisation, conv
        first = min(ops.index(c) for c in kernels if c in ops)
        last = max(len(ops) - 1 - ops[::-1].index(c) for c in kernels if c in ops)
        between = ops[first:last] if "QLinearConv" in ops else ops[first:]  # bytes get their offset at the output
        assert between.count("Add") + ops.count("Sub") == 0, ops


@pytest.mark.parametrize("target,k", [(DPU, 24), (DPU, 4096), (CPU, 24), (CPU, 4096)])  # 4096: float64 chunks
def test_matmul_with_constant_weights_fuses_exactly(target, k):
    # a fully connected layer (rows x K @ K x N + bias) as a 1x1 convolution of the rows
    rng = np.random.default_rng(43)
    b = Builder("half_up" if target == DPU else "half_even")
    s = (lambda n: 2.0 ** -n) if target == DPU else (lambda n: 0.83 * 2.0 ** -n)
    x = b.input("x", [5, k], s(5))
    w = b.weight("w", rng.normal(0, 0.6, (7, k)).astype(np.float32), s(7))
    bias = b.bias("b", rng.normal(0, 0.5, 7), np.float32(s(5)) * np.float32(s(7)))
    b.output(b.quantize(b.node("Gemm", [b.dq(x), w, bias], "fc", transB=1), s(1) if k > 100 else s(4)), "out")
    compiled = npuflow.compile(b.model(), target)
    assert [op["op"] for sg in compiled.manifest["subgraphs"] for op in sg.get("ops", [])].count("matmul") == 1
    plan = _equal_fused_and_kernels(b.model(), {"x": _x([5, k], 44, scale=8.0)}, target)
    assert _fused_ops(plan) == 1 and not plan.reasons, plan.reasons
    run = next(it for it in plan.items if isinstance(it, fused.FusedRun))
    assert ("Sum" in {n.op_type for n in run.graph().nodes}) == (k > 100)  # the long reduction in chunks


def test_cpu_tables_between_integer_programs_run_inside_them(tmp_path):
    # conv (DPU) -> sigmoid (CPU: one table) -> Mul (DPU): the table becomes a lut op of one
    # integer program, which composes it with the Mul into SiLU's table; outputs and every dumped
    # integer tensor (the CPU subgraph's output included) equal the subgraph-by-subgraph kernels
    compiled = npuflow.compile(_silu_model(), DPU)
    assert [sg.device for sg in compiled.subgraphs] == ["DPU", "CPU", "DPU"]
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    (step,) = fast._programs[0].steps
    assert step.indices == (0, 1, 2) and len(ref._programs[0].steps) == 3
    (run,) = [it for it in step.executor.plan.items if isinstance(it, fused.FusedRun)]
    ops = _live_ops(run)
    assert ops.count("GatherElements") == 1, ops
    feeds = {"x": _x([1, 8, 16, 16], 5, scale=3.0)}
    a = fast.run(feeds, dump_dir=tmp_path / "fast")
    b = ref.run(feeds, dump_dir=tmp_path / "ref")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.npy"))
    assert names == sorted(p.name for p in (tmp_path / "fast").glob("*.npy")) and len(names) >= 3
    for n in names:
        assert np.array_equal(np.load(tmp_path / "fast" / n), np.load(tmp_path / "ref" / n)), n
    # the subgraphs still run one by one for hosts that schedule them (runners, run_subgraph)
    env = dict(feeds)
    for k, sg in enumerate(compiled.subgraphs):
        outs = fast.run_subgraph(k, [env[t] for t in compiled.manifest["subgraphs"][k]["inputs"]])
        env.update(zip(compiled.manifest["subgraphs"][k]["outputs"], outs))
    assert all(np.array_equal(env[k], a[k]) for k in a)


def _table_between_convs(channels_last: bool, tmp_path) -> tuple[np.ndarray, list[str]]:
    """QLinearConv -> a byte table (``fused_tables._lookup``) -> QLinearConv, run by ONNX Runtime as the
    fused runs are; the output and the ops of ONNX Runtime's optimised graph."""
    rng = np.random.default_rng(7)
    shape = [1, 8, 6, 7]
    g = fused_graph.Graph({t: {"shape": shape, "dtype": "uint8"} for t in ("a", "b")})

    def qconv(codes: str) -> str:
        w = rng.integers(0, 256, (8, 8, 1, 1))
        return g.node("QLinearConv", [codes, g.scalar(1.0), g.scalar(0, np.uint8), g.const(w, np.uint8),
                                      g.scalar(1.0), g.scalar(128, np.uint8), g.scalar(64.0), g.scalar(0, np.uint8)])

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, shape)
    g.put_bytes("a", qconv("x"))
    original = fused_tables.channels_last
    fused_tables.channels_last = original if channels_last else (lambda g, codes: False)
    try:
        fused_tables._lookup(g, "a", "b", rng.integers(0, 256, 256), 0)
    finally:
        fused_tables.channels_last = original
    y = helper.make_tensor_value_info(qconv(g.bytes["b"]), TensorProto.UINT8, shape)
    model = helper.make_model(helper.make_graph(g.nodes, "t", [x], [y], g.inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"optimized_{channels_last}.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=fused.DISABLED_OPTIMIZERS)
    out = sess.run(None, {"x": rng.integers(0, 256, shape).astype(np.uint8)})[0]
    return out, [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_a_table_between_channels_last_convolutions_keeps_their_layout(tmp_path):
    # ONNX Runtime runs QLinearConv channels-last: a table written channels-last between them lets
    # its layout transposes cancel (the graph's input and output transposes remain), same codes
    fast, fast_ops = _table_between_convs(True, tmp_path)
    slow, slow_ops = _table_between_convs(False, tmp_path)
    assert np.array_equal(fast, slow)
    assert fast_ops.count("Transpose") == 2 and slow_ops.count("Transpose") == 4, (fast_ops, slow_ops)


def test_a_products_power_of_two_scale_is_applied_to_its_smaller_operand():
    # an SE block's product of a feature map and its per-channel scale (half-up, shift 7): the one
    # scaling of the product, exact either way, multiplies the 8 scales, not the 336 positions
    b = Builder("half_up")
    x, s = b.input("x", [1, 8, 6, 7], 2.0 ** -5), b.input("s", [1, 8, 1, 1], 2.0 ** -7)
    b.output(b.quantize(b.node("Mul", [b.dq(x), b.dq(s)], "se"), 2.0 ** -5), "out")
    rng = np.random.default_rng(5)
    feeds = {"x": (rng.integers(-128, 128, (1, 8, 6, 7)) / 32).astype(np.float32),
             "s": (rng.integers(-128, 128, (1, 8, 1, 1)) / 128).astype(np.float32)}
    plan = _equal_fused_and_kernels(b.model(), feeds, DPU)
    run = next(it for it in plan.items if isinstance(it, fused.FusedRun))
    g = run.graph()
    consts = {t.name for t in g.inits}
    inputs = {fused_graph.input_name(k): t for k, t in enumerate(g.inputs)}

    def source(name: str) -> str:  # the program input a value is computed from (first inputs back)
        while name not in inputs:
            name = next(n for n in g.nodes if name in n.output).input[0]
        return inputs[name]

    muls = [n for n in g.nodes if n.op_type == "Mul"]
    product = next(m for m in muls if not consts.intersection(m.input))
    scaled = [source(n.input[0]) for n in muls if n.input[1] in consts and n.output[0] in product.input]
    assert scaled == ["s"], scaled
