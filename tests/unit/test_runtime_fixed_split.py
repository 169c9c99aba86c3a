"""A fixed-point requantisation (``fused_fixed.requantize_fixed``) with a few channels that have no
exact float32 multiplier: the float32 form runs on the whole tensor and only those channels go
through float64 (PP-OCRv3 det en on cpu-int8: 1 of the 24 channels of its 160x160 transposed
convolution cast the whole accumulator to float64); codes equal ``numerics`` on every accumulator
near each channel's steps."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from npuflow import numerics as nm
from npuflow.runtime import fused_fixed, fused_graph
from tests.unit.test_runtime_fixed_fixes import MULT, SHIFT
from tests.unit.test_runtime_fused import _run

#: channel 1 is test_runtime_fixed_fixes' YOLOv8n bernoulli2 channel without an exact float32
#: multiplier (a step 1.1e-7 from the tie 42.5 at accumulator 63006); the others multiply by powers
#: of two (2^-8 .. 2^-10), exact in float32
MULTS = np.array([1 << 30, MULT[0], 1 << 30, 1 << 30])
SHIFTS = np.array([38, SHIFT[0], 39, 40])
EP = {"mode": "fixed", "multiplier": MULTS.tolist(), "shift": SHIFTS.tolist(), "zp": 0, "round": "half_even",
      "dtype": "int8", "clamps": [], "scale": 0.05}
BOUND = 200_000  # every channel's accumulators: -BOUND..BOUND (each saturates before either end)


def _accumulators() -> np.ndarray:
    """Every accumulator within 3 of a step of any channel, and the range's ends."""
    ks = np.arange(-128, 128) + 0.5
    near = np.concatenate([np.round(ks * 2.0 ** s / m) for m, s in zip(MULTS, SHIFTS)])
    acc = np.unique(np.clip((near[:, None] + np.arange(-3, 4)).reshape(-1), -BOUND, BOUND)).astype(np.int64)
    return np.concatenate([acc, [-BOUND, BOUND]])


def test_only_channels_without_float32_multiplier_are_requantised_in_float64():
    fx = fused_fixed.FixedPoint(EP, 4, np.full(4, -BOUND), np.full(4, BOUND))
    m32 = fused_fixed.float32_multipliers(fx, EP, -128, 127, False, partial=True)
    assert list(np.isnan(m32)) == [False, True, False, False]  # the case the split form is for
    acc = _accumulators()
    assert 63006 in acc and -63006 in acc
    g = fused_graph.Graph({})
    y, zp = fused_fixed.requantize_fixed(g, "acc", False, fx, EP, -128, 127)
    got = _run(g, y, {"acc": np.broadcast_to(acc.astype(np.float32), (1, 1, 4, len(acc))).transpose(0, 2, 1, 3).copy()},
               TensorProto.FLOAT)[0, :, 0] + zp
    want = np.clip(nm.requantize_fixed_point(acc[None, :], MULTS[:, None], SHIFTS[:, None], "half_even"), -128, 127)
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]
    producers = {o: n for n in g.nodes for o in n.output}
    to_double = [n for n in g.nodes if n.op_type == "Cast" and n.attribute[0].i == TensorProto.DOUBLE]
    # float64 only on a slice of the accumulator (channel 1), not the whole tensor
    assert to_double and all(n.input[0] in producers and producers[n.input[0]].op_type == "Slice"
                         for n in to_double), \
        [(n.op_type, list(n.input)) for n in g.nodes]
