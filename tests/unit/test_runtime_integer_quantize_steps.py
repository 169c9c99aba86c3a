"""A fused run's doubled half-up / half-down rounding whose codes leave as 8-bit integers ends in
``Add(+-0.5) -> QuantizeLinear(2, zero point)`` (``halfup_steps.integer_quantize_steps``, issue 19): the same
codes as ``OUTER(INNER(d) * 0.5) -> Clip -> Add(zero point) -> Cast`` for every float32 but NaN, 2 or 3 nodes
fewer a step."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import numerics as nm
from npuflow.runtime import executors, joined
from npuflow.runtime.halfup_steps import integer_quantize_steps
from tests.unit.test_runtime_halfup_steps import _hard_inputs, _run
from tests.unit.test_runtime_joined_seams import compile_effformer

_TYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def _rounding(mode: str, dtype: str, c: int, lo: float, hi: float, shared: bool = False) -> onnx.ModelProto:
    """``fused_graph.round_float``'s doubled rounding of ``x`` (``x`` is ``d``: twice the value) clipped to
    ``lo..hi``, ``Add(c)`` (none where ``c`` is 0) and a ``Cast`` to ``dtype``; ``shared``: the halved value
    is a second output as well."""
    inner, outer = nm.rounding_by_doubling(mode)
    consts = {"half": 0.5, "lo": lo, "hi": hi, "c": float(c)}
    nodes = [helper.make_node(inner, ["x"], ["n"]), helper.make_node("Mul", ["n", "half"], ["m"]),
             helper.make_node(outer, ["m"], ["r"]), helper.make_node("Clip", ["r", "lo", "hi"], ["k"])]
    last = "k"
    if c:
        nodes.append(helper.make_node("Add", ["k", "c"], ["kc"]))
        last = "kc"
    nodes.append(helper.make_node("Cast", [last], ["y"], to=_TYPES[dtype]))
    outputs = [helper.make_tensor_value_info("y", _TYPES[dtype], [None])]
    if shared:
        outputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [None]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])], outputs,
                              [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["half_up", "half_down"])
@pytest.mark.parametrize("dtype,c", [("int8", 0), ("int8", -3), ("uint8", 128), ("uint8", 0)])
def test_quantize_linear_tail_gives_the_same_codes_for_every_float32(mode, dtype, c):
    qmin, qmax = nm.qrange(8, dtype == "int8")
    model = _rounding(mode, dtype, c, qmin - c, qmax - c)
    short = integer_quantize_steps(model)
    assert [n.op_type for n in short.graph.node] == [nm.rounding_by_doubling(mode)[0], "Add", "QuantizeLinear"]
    x = _hard_inputs(1.0)
    for level in ("basic", "all"):
        want, got = _run(model, x, level), _run(short, x, level)
        bad = got != want
        assert not bad.any(), (level, x[bad][:5], got[bad][:5], want[bad][:5])


def test_steps_whose_codes_stay_float_or_are_clamped_tighter_are_kept():
    tighter = _rounding("half_up", "int8", 0, 0, 127)  # a ReLU's clamp: QuantizeLinear saturates to the type
    moved = _rounding("half_up", "uint8", 128, -128, 126)
    shared = _rounding("half_up", "int8", 0, -128, 127, shared=True)  # the halved value read elsewhere
    for model in (tighter, moved, shared):
        assert integer_quantize_steps(model) is model


@pytest.fixture(scope="module")
def effformer_b4096(tmp_path_factory):
    return compile_effformer(tmp_path_factory, "DPUCZDX8G_ISA1_B4096")


def test_effformer_b4096_quantizes_its_input_in_the_short_form_equal_to_the_kernels(effformer_b4096, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    compiled, frames = effformer_b4096
    session, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined)
    runs = [p.executor.single for p in step.executor.parts if isinstance(p.executor, executors.IntegerExecutor)]
    ops = [n.op_type for run in runs for n in run.model()[0].graph.node]
    assert ops.count("Ceil") == 1 and ops.count("QuantizeLinear") >= 2, ops  # 3 Ceil, no QuantizeLinear before
    for x in frames:
        a, b = session.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in b)
