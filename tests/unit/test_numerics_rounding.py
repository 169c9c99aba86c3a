"""Rounding lives in numerics.py only, with an explicit tie rule (issue 17 item 4).

* ``round_values`` is exact (checked against rational arithmetic) for every float32/float64,
  ties, huge values, signed zeros and infinities included, and the torch path (``xp=torch``,
  what the fake quantization runs) returns the same bits as numpy;
* readers and writers of quantized weights use the rule the model or the target names: weight
  codes behind a quantize step are the step's own (what ONNX Runtime computes), and biases that
  bias correction rewrites are quantized as the export quantized them (the target's bias rule);
* no module of ``npuflow/`` outside ``numerics.py`` rounds on its own (an AST lint).
"""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from npuflow import numerics as nm
from npuflow import qdq
from npuflow.quant.algorithms import apply
from npuflow.quant.algorithms.qdq_weights import quantized_layers, read_bias, read_codes, write_bias
from npuflow.quant.config import QuantConfig
from npuflow.targets import load_target

from .quant_nets import session

MODES = list(nm.RoundMode)
DTYPES = [np.float32, np.float64]
_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def exact_round(v: float, mode: nm.RoundMode) -> float:
    """The tie rule on the exact rational value of ``v`` (the definition, not an implementation)."""
    if not math.isfinite(v):
        return v
    f = Fraction(v)
    low = math.floor(f)
    d = f - low
    if d != Fraction(1, 2):
        return float(low + (d > Fraction(1, 2)))
    up = {nm.RoundMode.HALF_EVEN: low % 2 == 1, nm.RoundMode.HALF_UP: True, nm.RoundMode.HALF_DOWN: False,
          nm.RoundMode.STD_ROUND: v > 0}[mode]
    return float(low + up)


def edge_values(dtype) -> np.ndarray:
    """Ties, their neighbours, the float32/float64 corners where ``floor(v + 0.5)`` fails, the
    largest finite values, signed zeros, subnormals and infinities."""
    dt = np.dtype(dtype)
    mant = np.finfo(dt).nmant  # 23 or 52
    ties = np.concatenate([np.arange(-40, 40) + 0.5, [2.0 ** mant - 0.5, -(2.0 ** mant - 0.5)]]).astype(dt)
    near = np.concatenate([np.nextafter(ties, dt.type(np.inf)), np.nextafter(ties, dt.type(-np.inf))])
    corners = np.array([0.5 - 2.0 ** -(mant + 2), -(0.5 - 2.0 ** -(mant + 2)), 2.0 ** mant + 1, -(2.0 ** mant + 1),
                        2.0 ** (mant + 1), 0.0, -0.0, 0.3, -0.3, np.finfo(dt).max, -np.finfo(dt).max,
                        np.finfo(dt).smallest_subnormal, -np.finfo(dt).smallest_subnormal, np.inf, -np.inf], dt)
    return np.concatenate([ties, near, corners]).astype(dt)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(_INT[a.dtype]), b.view(_INT[b.dtype]))


def _check(values: np.ndarray, mode: nm.RoundMode) -> None:
    got = nm.round_values(values, mode)
    assert got.dtype == values.dtype  # float32 stays float32, float64 float64
    want = np.array([exact_round(float(v), mode) for v in values], dtype=values.dtype)
    assert np.array_equal(got, want), values[got != want]
    twin = nm.round_values(torch.from_numpy(values.copy()), mode, xp=torch)
    assert twin.dtype == torch.from_numpy(values).dtype
    assert _same_bits(twin.numpy(), got)  # bit for bit: the sign of every zero included


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_tie_rule_is_exact_and_torch_equals_numpy_on_the_edges(mode, dtype):
    _check(edge_values(dtype), mode)


def test_the_old_half_up_corners_are_rounded_to_nearest():
    """``floor(v + 0.5)`` gave 1 for float32 0.49999997 and 2**52 + 2 for float64 2**52 + 1."""
    assert nm.round_values(np.float32([0.49999997]), "half_up").tolist() == [0.0]
    assert nm.round_values(np.float64([2.0 ** 52 + 1]), "half_up").tolist() == [2.0 ** 52 + 1]
    assert nm.round_values(np.float32([-0.49999997]), "std_round").tolist() == [0.0]


def test_integer_and_list_inputs_round_in_float64():
    assert nm.round_values([1, 2, 3], "half_up").dtype == np.float64
    assert nm.round_values(np.int32([5]), "half_even").dtype == np.float64
    assert nm.round_values(torch.tensor([5]), "half_even", xp=torch).dtype == torch.float64
    assert nm.round_values([2.0 ** 40 + 0.5], "half_up", xp=torch).tolist() == [2.0 ** 40 + 1]  # not float32


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MODES), st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64),
       st.lists(st.integers(-(2 ** 22), 2 ** 22), min_size=1, max_size=16), st.integers(-30, 30))
def test_random_float32_values_and_ties(mode, floats, ks, exponent):
    ties = [(k + 0.5) * 2.0 ** exponent for k in ks]  # exact ties of a power-of-two grid, scaled
    _check(np.array(floats + ties, dtype=np.float32), mode)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MODES), st.lists(st.floats(allow_nan=False), min_size=1, max_size=64),
       st.lists(st.integers(-(2 ** 51), 2 ** 51), min_size=1, max_size=16))
def test_random_float64_values_and_ties(mode, floats, ks):
    _check(np.array(floats + [k + 0.5 for k in ks], dtype=np.float64), mode)


@pytest.mark.parametrize("mode", MODES)
def test_nan_stays_nan_in_both_modules(mode):
    v = np.array([np.nan, 1.5], np.float32)
    assert np.isnan(nm.round_values(v, mode)[0])
    assert torch.isnan(nm.round_values(torch.from_numpy(v), mode, xp=torch)[0])


# --- the readers and writers of quantized weights -------------------------------------------


def _float_weight_conv(mode: nm.RoundMode, w: np.ndarray, scale: float) -> onnx.ModelProto:
    """x -> Conv(W) whose weight is ``float initializer -> quantize step (mode) -> DQ``; the
    quantize step's int8 codes are a second graph output, so ONNX Runtime reports them."""
    model = helper.make_model(helper.make_graph(
        [], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1], 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("w_q", TensorProto.INT8, list(w.shape))],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(scale), "w_s"),
         numpy_helper.from_array(np.int8(0), "w_zp")]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if qdq.uses_standard_quantize(mode, "int8"):
        q = helper.make_node("QuantizeLinear", ["w", "w_s", "w_zp"], ["w_q"], name="w_quant")
    else:
        op = qdq.ensure_quantize_function(model, mode, "int8")
        q = helper.make_node(op, ["w", "w_s", "w_zp"], ["w_q"], name="w_quant", domain=qdq.DOMAIN)
    model.graph.node.extend([q, helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], name="w_dq"),
                             helper.make_node("Conv", ["x", "w_dq"], ["y"], name="conv")])
    return model


@pytest.mark.parametrize("mode", [m for m in MODES if m is not nm.RoundMode.HALF_EVEN])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_the_onnx_quantize_functions_round_as_numerics_on_the_edges(mode, dtype):
    """The model-local Quantize_<mode> functions (what ONNX Runtime runs for the quantized model)
    equal numerics.quantize on float32 ties and near-ties, 0.49999997 included (Floor(v + 0.5)
    gave 1 there)."""
    values = edge_values(np.float32)
    values = values[np.isfinite(values)]
    bits = 8 if dtype == "int8" else 16
    elem = TensorProto.INT8 if dtype == "int8" else TensorProto.INT16
    node = helper.make_node(qdq.function_name(mode, dtype), ["x", "s", "z"], ["y"], domain=qdq.DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(values)])],
                              [helper.make_tensor_value_info("y", elem, [len(values)])],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("z", elem, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    qdq.ensure_quantize_function(model, mode, dtype)
    got = session(model).run(None, {"x": values})[0]
    assert np.array_equal(got, nm.quantize(values, 1.0, 0, bits=bits, round_mode=mode)), values


@pytest.mark.parametrize("mode", MODES)
def test_read_codes_are_the_codes_onnx_runtime_computes(mode):
    """Weight codes behind a quantize step follow that step's tie rule, whatever the caller's
    target: read_codes took a mode with a ``std_round`` default, wrong for ``QuantizeLinear``."""
    scale = 2.0 ** -4
    w = ((np.arange(-8, 8) + 0.5) * scale).astype(np.float32).reshape(4, 4, 1, 1)  # every weight a tie
    model = _float_weight_conv(mode, w, scale)
    layer, = quantized_layers(model)
    assert layer.round_mode is mode
    ort_codes = session(model).run(["w_q"], {"x": np.zeros((1, 4, 3, 3), np.float32)})[0]
    assert np.array_equal(read_codes(model, layer), ort_codes.astype(np.float64))
    assert np.array_equal(ort_codes, nm.quantize(w, scale, 0, round_mode=mode))


def test_an_unknown_quantize_step_is_not_read_as_some_rule():
    model = _float_weight_conv(nm.RoundMode.HALF_UP, np.ones((2, 2, 1, 1), np.float32), 0.5)
    model.graph.node[0].op_type = "Quantize_mystery_int8"
    assert quantized_layers(model) == []


@pytest.fixture(scope="module")
def dpu_model():
    import npuflow

    from .quant_nets import conv_net, samples

    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=4), target="DPUCZDX8G_ISA1_B4096",
                         config={"include_bias_corr": False})
    return q.dynamic_model


def test_write_bias_quantizes_as_the_export_did(dpu_model):
    """An int32 bias is written with the target's bias rule (DPU: ties away from zero) from its
    float32 quotient, as the export's ``bias_params`` quantizes it; it was ``np.rint`` (ties to
    even) of a float64 quotient."""
    model = onnx.ModelProto()
    model.CopyFrom(dpu_model)
    rule = load_target("DPUCZDX8G_ISA1_B4096").numerics.round_mode.bias
    assert rule is nm.RoundMode.STD_ROUND
    layers = [ql for ql in quantized_layers(model) if ql.bias_scale is not None]
    assert layers
    for ql in layers:
        unchanged = read_bias(model, ql, 0)  # the stored bias (cout is read only for a missing one)
        k = np.arange(unchanged.size) % 7 - 3  # -3 .. 3
        ties = ((k + 0.5) * ql.bias_scale.astype(np.float64)).astype(np.float32)
        cout = unchanged.size
        assert write_bias(model, ql, unchanged, rule)  # correcting by zero changes nothing
        assert np.array_equal(read_bias(model, ql, cout), unchanged)
        write_bias(model, ql, ties, rule)
        stored = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == ql.bias_name))
        assert stored.dtype == np.int32
        assert np.array_equal(stored, np.where(k >= 0, k + 1, k))  # away from zero; rint: even neighbour
        assert np.array_equal(stored, nm.quantize(ties, ql.bias_scale, 0, bits=32, round_mode=rule,
                                                  axis=0 if ql.bias_scale.size > 1 else None))


@pytest.mark.parametrize("target, config, expected", [
    ("cpu-int8", {}, "half_even"),
    ("DPUCZDX8G_ISA1_B4096", {}, "std_round"),
    ("DPUCZDX8G_ISA1_B4096", {"bias": {"round_mode": "half_even"}}, "half_even"),
])
def test_bias_correction_writes_with_the_bias_rule_the_export_used(monkeypatch, target, config, expected):
    seen = {}

    def fake_correction(float_model, qmodel, calibration, round_mode, on_outputs=None):
        seen["round_mode"] = nm.RoundMode(round_mode).value
        raise StopIteration  # nothing else of after_export matters here

    monkeypatch.setattr(apply, "correct_empirical", fake_correction)
    cfg = QuantConfig.from_dict({**config, "include_bias_corr": True})
    with pytest.raises(StopIteration):
        apply.after_export(None, None, lambda: iter([{}]), cfg, load_target(target))
    assert seen["round_mode"] == expected


# --- no rounding outside numerics.py --------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "npuflow"

#: ``(file, line text)`` of roundings that are not of quantized values, with the reason.  Empty
#: today: display roundings (``round(x, 6)``) pass the lint, and floors of bounds and bins are
#: not round-to-nearest.
ALLOWED: dict[tuple[str, str], str] = {}


def _rounding_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Round-to-nearest written by hand: ``np.rint``/``np.round``/``np.around``/``torch.round``
    (called or passed), a ``.round()`` method, builtin ``round(x)`` without digits,
    ``floor(x + 0.5)``, ``ceil(x - 0.5)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in ("np", "numpy", "torch") and node.attr in ("rint", "round", "around", "round_"):
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
                continue
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if isinstance(f, ast.Attribute) and f.attr == "round" and not (
                isinstance(f.value, ast.Name) and f.value.id in ("np", "numpy", "torch")):
            found.append((node.lineno, ".round()"))
        elif isinstance(f, ast.Name) and f.id == "round" and len(node.args) + len(node.keywords) < 2:
            found.append((node.lineno, "round(x)"))
        elif name in ("floor", "ceil") and node.args and isinstance(node.args[0], ast.BinOp):
            op = node.args[0]
            half = [s for s in (op.left, op.right) if isinstance(s, ast.Constant) and s.value == 0.5]
            if half and isinstance(op.op, (ast.Add, ast.Sub)):
                found.append((node.lineno, f"{name}(x +- 0.5)"))
    return found


def test_the_lint_sees_every_hand_written_rounding():
    src = ("import numpy as np, torch, math\n"
           "a = np.rint(x)\nb = np.round(x)\nc = torch.round(x)\nd = x.round()\ne = round(x)\n"
           "f = np.floor(x + 0.5)\ng = torch.ceil(x - 0.5)\nh = math.floor(0.5 + x)\nk = np.around(x)\n"
           "fn = np.rint\nok = round(x, 3)\nok2 = np.floor(x)\nok3 = np.floor(x * 0.5)\n")
    assert sorted(line for line, _ in _rounding_calls(ast.parse(src))) == list(range(2, 12))


def test_no_rounding_outside_numerics():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel == "npuflow/numerics.py":
            continue
        text = path.read_text()
        lines = text.splitlines()
        for lineno, what in _rounding_calls(ast.parse(text)):
            if (rel, lines[lineno - 1].strip()) not in ALLOWED:
                offences.append(f"{rel}:{lineno}: {what}: {lines[lineno - 1].strip()}")
    assert not offences, ("round with npuflow.numerics.round_values (or quantize) and a named tie rule:\n"
                          + "\n".join(offences))
