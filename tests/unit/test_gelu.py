"""GELU is one activation in every exported form (``npuflow/passes/gelu.py``): ``check`` places it
as one ``gelu`` op (fused members), the quantizer writes no quantize step inside it, and the
compiler lowers it as one 256-entry table that equals ONNX Runtime on the quantized model and the
mathematical GELU at the codes; a chain with other constants (a ``Div`` by 2.0) is not a GELU.
On the DPUs (no ``gelu`` in their target files) it stays on the CPU with check's reason naming it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.numerics import ONNX_ROUND_MODE, dequantize, qrange, quantize
from npuflow.passes.fold_constants import fold_constants
from npuflow.passes.gelu import canonical_gelus, float_gelus, is_canonical
from npuflow.placement import Device
from tests.compile_check import accelerator_ops, compare_with_ort
from tests.unit.quant_nets import model_from
from tests.unit.test_placement_agreement import disagreements

K, N = 8, 16
SHAPE = [1, 4, 8, K]  # the agreement helper's input (1, 4, 8, 8)
TABLE_TARGETS = ["cpu-int8", "bernoulli2"]
SQRT2, TANH_K, TANH_C = math.sqrt(2.0), math.sqrt(2.0 / math.pi), 0.044715


def _erf(b: dict, x: str, first: str = "div", half_first: bool = False, div_by: float = SQRT2) -> list:
    """``x * 0.5 * (1 + erf(x / sqrt 2))`` as exporters write it."""
    arg = helper.make_node("Div", [x, b["c"](div_by)], ["g_arg"], name="g_div") if first == "div" else \
        helper.make_node("Mul", [x, b["c"](1.0 / SQRT2)], ["g_arg"], name="g_div")
    nodes = [arg, helper.make_node("Erf", ["g_arg"], ["g_erf"], name="g_erf"),
             helper.make_node("Add", ["g_erf", b["c"](1.0)], ["g_one"], name="g_add")]
    if half_first:  # HF: 0.5 * x first, then times (1 + erf)
        return nodes + [helper.make_node("Mul", [x, b["c"](0.5)], ["g_half"], name="g_half"),
                        helper.make_node("Mul", ["g_half", "g_one"], ["g"], name="g_end")]
    return nodes + [helper.make_node("Mul", [x, "g_one"], ["g_x"], name="g_mul"),
                    helper.make_node("Mul", ["g_x", b["c"](0.5)], ["g"], name="g_end")]


def _tanh(b: dict, x: str, cube: str = "mul") -> list:
    """torch's ``approximate='tanh'`` (``x * x * x``) or HF's ``NewGELU`` (``Pow(x, 3)``, 0.5 first)."""
    if cube == "mul":
        head = [helper.make_node("Mul", [x, x], ["g_sq"], name="g_sq"),
                helper.make_node("Mul", [x, "g_sq"], ["g_cube"], name="g_cube")]
    else:
        head = [helper.make_node("Pow", [x, b["c"](3.0)], ["g_cube"], name="g_cube")]
    nodes = head + [helper.make_node("Mul", [b["c"](TANH_C), "g_cube"], ["g_c"], name="g_c"),
                    helper.make_node("Add", [x, "g_c"], ["g_u"], name="g_u"),
                    helper.make_node("Mul", [b["c"](TANH_K), "g_u"], ["g_k"], name="g_k"),
                    helper.make_node("Tanh", ["g_k"], ["g_t"], name="g_tanh"),
                    helper.make_node("Add", [b["c"](1.0), "g_t"], ["g_one"], name="g_add")]
    if cube == "mul":
        return nodes + [helper.make_node("Mul", [x, "g_one"], ["g_x"], name="g_mul"),
                        helper.make_node("Mul", [b["c"](0.5), "g_x"], ["g"], name="g_end")]
    return nodes + [helper.make_node("Mul", [x, b["c"](0.5)], ["g_half"], name="g_half"),
                    helper.make_node("Mul", ["g_half", "g_one"], ["g"], name="g_end")]


FORMS = {
    "erf_div": lambda b, x: _erf(b, x),
    "erf_mul": lambda b, x: _erf(b, x, first="mul"),
    "erf_half_first": lambda b, x: _erf(b, x, half_first=True),
    "tanh_torch": lambda b, x: _tanh(b, x),
    "tanh_pow": lambda b, x: _tanh(b, x, cube="pow"),
    "gelu_op20": lambda b, x: [helper.make_node("Gelu", [x], ["g"], name="g_end")],
}


def _net(form: str, **kw) -> onnx.ModelProto:
    """``x -> MatMul -> Add(bias) -> GELU -> MatMul -> Add(bias) -> y`` (a transformer MLP)."""
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []

    def c(value: float) -> str:
        name = f"k{len(inits)}"
        inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    w1 = rng.normal(0, 0.5, (K, N)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (N, K)).astype(np.float32)
    b1 = rng.normal(0, 0.3, N).astype(np.float32)
    b2 = rng.normal(0, 0.1, K).astype(np.float32)
    inits += [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
              numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    b = {"c": c}
    act = _erf(b, "h", **kw) if kw else FORMS[form](b, "h")  # kw: other constants in the erf form
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["mm1"], name="fc1"),
             helper.make_node("Add", ["mm1", "b1"], ["h"], name="fc1_bias"), *act,
             helper.make_node("MatMul", ["g", "w2"], ["mm2"], name="fc2"),
             helper.make_node("Add", ["mm2", "b2"], ["y"], name="fc2_bias")]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
                      opset=20 if form == "gelu_op20" else 17)


def _calib(n: int = 8, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)]


def _gelu_members(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.name.startswith("g_")]


@pytest.mark.parametrize("form", list(FORMS))
def test_every_exported_form_is_one_gelu_activation(form):
    model = _net(form)
    (found,) = float_gelus(fold_constants(model).graph)
    assert found.nodes[-1].name == "g_end" and found.x == "h"
    assert found.approximate == ("tanh" if form.startswith("tanh") else "none")
    r = npuflow.check(model, "cpu-int8")
    end = r.node("g_end")
    assert end.op_kind == "gelu" and end.device == Device.NPU, end.reasons
    assert all(r.node(m).fused_into == "g_end" for m in _gelu_members(model) if m != "g_end")
    assert sum(1 for s in r.subgraphs if s.device != Device.CPU) == 1


@pytest.mark.parametrize("form", list(FORMS))
def test_canonical_chain_keeps_the_values(form):
    """The float pass writes each decomposed form as the one chain the compiler walks (results
    within float rounding; the last node keeps its name and output)."""
    import onnxruntime as ort

    model = fold_constants(_net(form))
    canon = canonical_gelus(model)
    (found,) = float_gelus(canon.graph)
    assert is_canonical(found) and found.nodes[-1].name == "g_end"
    x = _calib(1, seed=5)[0]
    want = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(canon.SerializeToString()).run(None, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", [{"div_by": 2.0}, {"div_by": 1.5}])
def test_other_constants_are_not_a_gelu(variant):
    model = _net("erf_div", **variant)
    assert float_gelus(fold_constants(model).graph) == []
    r = npuflow.check(model, "cpu-int8")
    assert r.node("g_end").op_kind != "gelu" and r.node("g_div").fused_into != "g_end"


def _table_op(compiled) -> dict:
    (op,) = [op for op in accelerator_ops(compiled) if op.get("kind") == "gelu"]
    return op


@pytest.mark.parametrize("target", TABLE_TARGETS)
@pytest.mark.parametrize("form", ["erf_div", "erf_half_first", "tanh_torch", "gelu_op20"])
def test_one_table_equal_to_ort_and_to_gelu_at_the_codes(target, form):
    model = _net(form)
    q = npuflow.quantize(model, _calib(), target=target, warn=False)
    inside = {n.output[0] for n in q.model.graph.node if n.name.startswith("g_") and n.name != "g_end"}
    assert not any(n.op_type.startswith("Quantize") or n.domain == "ai.npuflow"
                   for n in q.model.graph.node if set(n.input) & inside), "a quantize step inside the GELU"
    compiled = npuflow.compile(q.model, target)
    assert all(sg.on_accelerator for sg in compiled.subgraphs)
    kinds = [op.get("kind") for op in accelerator_ops(compiled) if op.get("kind") not in ("quantize", "dequantize")]
    assert kinds == ["fc", "gelu", "fc"], kinds
    diffs = compare_with_ort(q.model, _calib(1, seed=7)[0], target)
    assert max(diffs.values()) <= (0 if target != "cpu-int8" else 1), diffs

    # the table against the mathematical GELU at every input code, rounded as the quantize step rounds
    table = np.asarray(compiled.blob(_table_op(compiled)["blobs"]["table"])).reshape(-1)
    tensors = q.info["tensors"]
    xin, yout = tensors["h"], tensors["g"]
    lo, hi = qrange(8, xin["signed"])
    codes = np.arange(lo, hi + 1)
    x = dequantize(codes, xin["scale"], xin["zero_point"]).astype(np.float64)
    approximate = form.startswith("tanh")
    ref = 0.5 * x * (1 + (np.tanh(TANH_K * (x + TANH_C * x ** 3)) if approximate else
                          np.vectorize(math.erf)(x / SQRT2)))
    want = quantize(ref, yout["scale"], yout["zero_point"], signed=yout["signed"],
                    round_mode=yout.get("round_mode") or ONNX_ROUND_MODE)
    off = np.abs(table.astype(np.int64) - want.astype(np.int64))
    assert off.max() <= 1 and np.count_nonzero(off) <= 2, (np.flatnonzero(off), off.max())


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", "DPUCZDX8G_ISA1_B4096"])
@pytest.mark.parametrize("form", ["erf_div", "erf_mul", "tanh_torch", "tanh_pow"])
def test_check_float_check_quantized_and_compile_agree(target, form, tmp_path):
    assert disagreements(_net(form), target, str(tmp_path)) == []


def test_a_dpu_keeps_gelu_on_the_cpu_naming_it():
    r = npuflow.check(_net("erf_div"), "DPUCZDX8G_ISA1_B4096")
    end = r.node("g_end")
    assert end.device == Device.CPU and any("gelu" in reason for reason in end.reasons), end.reasons
