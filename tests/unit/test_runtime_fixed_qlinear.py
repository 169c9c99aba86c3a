"""Fixed-point convolutions (bernoulli2) on ONNX Runtime's ``QLinearConv`` where a float32
multiplier provably gives the target's codes (``fused_fixed.kernel_form``), the other channels
in the exact forms (``fused_fixconv.dense_fixed``): codes equal ``numerics`` at every step."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from npuflow import numerics as nm
from npuflow.ort_kernels import convinteger_exact
from npuflow.runtime import fused_conv, fused_fixed, fused_graph
from tests.unit.test_runtime_fused import _run

CIN = 256
#: channel 0: shift 44, a step whose exact product lies within float32's spacing of a tie (the
#: multiplier of test_numerics' refused channel); channel 1: shift 31, every step far from one
MULT = np.array([np.random.default_rng(5).integers(1 << 30, 1 << 31, 8)[0], 1518500251])
SHIFT = np.array([44, 31])
EP = {"mode": "fixed", "multiplier": MULT.tolist(), "shift": SHIFT.tolist(), "zp": 0, "round": "half_even",
      "dtype": "int8", "clamps": [], "scale": 0.05}


def _weights() -> np.ndarray:
    """1x1 weights (2, CIN): 1 then 127s, so that an input reaches every accumulator up to 127*255+127."""
    w = np.full((2, CIN, 1, 1), 127, np.int64)
    w[:, 0] = 1
    return w


def inputs_for(acc: np.ndarray, tap: int, cin: int) -> np.ndarray:
    """Int8 codes (1, cin, 1, len(acc)) whose accumulator with 1x1 weights ``[1, tap, tap, ...]``
    (``cin`` of them) is ``acc``."""
    q, r = np.divmod(acc, tap)
    x = np.zeros((cin, len(acc)), np.int64)
    x[0] = r
    for c in range(1, cin):
        x[c] = np.clip(q, -128, 127)
        q = q - x[c]
    assert not np.any(q)
    return x.astype(np.int8).reshape(1, cin, 1, -1)


def _inputs_for(acc: np.ndarray) -> np.ndarray:
    """Int8 codes whose accumulator with :func:`_weights` is ``acc``."""
    return inputs_for(acc, 127, CIN)


def _exact(acc: np.ndarray) -> np.ndarray:
    return np.clip(nm.requantize_fixed_point(acc[None, :], MULT[:, None], SHIFT[:, None], "half_even"), -128, 127)


def _steps() -> np.ndarray:
    """Every accumulator next to a step of either channel (two either side)."""
    ks = np.arange(-127, 128) - 0.5
    steps = np.concatenate([np.ceil(ks * 2.0 ** s / m) for m, s in zip(MULT, SHIFT)])
    return np.unique((steps[:, None] + np.arange(-2, 3)).reshape(-1)).astype(np.int64)


def test_kernel_form_refuses_a_channel_where_float32_requantisation_differs():
    w, bias, reach = _weights(), np.zeros(2, np.int64), 128
    assert fused_fixed.kernel_form(w, bias, EP, reach) is None
    _, _, mult = fused_fixed.kernel_form(w, bias, EP, reach, partial=True)
    assert np.isnan(mult[0]) and np.isfinite(mult[1])
    # the refusal is needed: MLAS' float32 requantisation (numerics.requantize_float) with the
    # nearest float32 multiplier rounds an accumulator of channel 0 differently
    acc = _steps()
    m32 = np.float32(np.ldexp(float(MULT[0]), -int(SHIFT[0])))
    assert not np.array_equal(np.clip(nm.requantize_float(acc, m32, "half_even"), -128, 127), _exact(acc)[0])
    # and the accepted channel's multiplier gives the exact codes on every accumulator it can hold
    every = np.arange(-reach * 127 * CIN, reach * 127 * CIN + 1)
    assert np.array_equal(np.clip(nm.requantize_float(every, mult[1], "half_even"), -128, 127),
                          np.clip(nm.requantize_fixed_point(every, MULT[1], SHIFT[1], "half_even"), -128, 127))
    assert fused_fixed.kernel_form(w, bias, {**EP, "round": "half_up"}, reach) is None  # MLAS ties to even


def conv_graph(x: np.ndarray, positions: int, ep: dict, w: np.ndarray, *, group: int = 1,
               stride: int = 1) -> fused_graph.Graph:
    """A fused graph of one two-channel int8 convolution of ``x`` (``fused_conv.conv``), output
    ``(1, 2, 1, positions)``, epilogue ``ep``, weights ``w``, zero bias."""
    shape = [1, 2, 1, positions]
    g = fused_graph.Graph({"x": {"shape": list(x.shape), "dtype": "int8"}, "y": {"shape": shape, "dtype": "int8"}})
    op = {"op": "conv", "name": "c", "inputs": ["x"], "outputs": ["y"],
          "attrs": {"in_shape": list(x.shape), "out_shape": shape, "pads": [0, 0, 0, 0], "strides": [1, stride],
                    "dilations": [1, 1], "group": group, "x_zp": 0, "lshift": 0, "epilogue": ep}}
    fused_conv.conv(g, op, {"w": w, "b": np.zeros(2, np.int64)})
    return g


def run_int8(g: fused_graph.Graph, x: np.ndarray) -> np.ndarray:
    """Run :func:`conv_graph`'s graph on ``x``: its int8 output codes."""
    y = g.node("Cast", [g.read("y")], to=TensorProto.INT8)
    return _run(g, y, {fused_graph.input_name(0): x}, TensorProto.INT8)


def test_split_convolution_equals_numerics_at_every_step():
    acc = _steps()
    acc = acc[np.abs(acc) <= 127 * 255 + 127]
    x = _inputs_for(acc)
    g = conv_graph(x, len(acc), EP, _weights())
    kinds = [n.op_type for n in g.nodes]
    # channel 1 on the kernel, channel 0 apart: put back in order by one Concat, no Gather of channels
    # (ONNX Runtime runs that channels-first between layout transposes: fused_fixconv.dense_fixed)
    assert kinds.count("QLinearConv") == 1 and "Gather" not in kinds and kinds.count("Concat") == 1, kinds
    assert ("ConvInteger" in kinds) is convinteger_exact(), kinds  # else the float forms serve channel 0
    got = run_int8(g, x)
    assert np.array_equal(got.reshape(2, -1), _exact(acc))
