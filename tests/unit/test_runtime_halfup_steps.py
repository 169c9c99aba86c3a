"""A CPU subgraph's half-up / half-down quantize steps run as four ONNX nodes (``runtime/halfup_steps.py``,
``numerics.rounding_as_quantize_linear``; issue 19) where the quantizer's function inlines to eight, with the
same codes for every float32 input but NaN (whose integer code ONNX leaves undefined)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import numerics as nm, qdq
from npuflow.runtime import executors
from npuflow.runtime.halfup_steps import shorter_quantize_steps
from tests.unit.test_runtime_joined_seams import compile_effformer

_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def _step_model(mode: str, dtype: str, scale, zero_point: int) -> onnx.ModelProto:
    """One call of the quantizer's quantize function, as a DPU target's CPU subgraph holds it."""
    graph = helper.make_graph(
        [helper.make_node(qdq.function_name(mode, dtype), ["x", "s", "z"], ["y"], domain=qdq.DOMAIN)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", _ELEM[dtype], [None])],
        [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
         numpy_helper.from_array(np.asarray(zero_point, np.dtype(dtype)), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(qdq.DOMAIN, 1)])
    model.functions.append(qdq.make_quantize_function(mode, dtype, 17))
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, level: str) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _reference(x: np.ndarray, mode: str, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    qmin, qmax = nm.qrange(8, dtype == "int8")
    with np.errstate(all="ignore"):
        v = x / np.float32(scale)
    return np.clip(nm.round_values(v, mode) + zero_point, qmin, qmax).astype(dtype)


def _hard_inputs(scale: float) -> np.ndarray:
    """Every float32 within 64 steps of each tie and integer of ``x / scale`` in [-300, 300] (ties,
    negative ties, the clip bounds of both types), 10^6 random bit patterns (all exponents), and the
    extremes: infinities, signed zeros, subnormals, the largest finite values."""
    anchors = (np.arange(-600, 601) * 0.5 * np.float32(scale)).astype(np.float32)
    near = (anchors.view(np.int32)[:, None] + np.arange(-64, 65, dtype=np.int32)[None]).ravel().view(np.float32)
    bits = np.random.default_rng(0).integers(-2 ** 31, 2 ** 31, 1_000_000, dtype=np.int64).astype(np.int32)
    extremes = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38,
                         np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    x = np.concatenate([near, bits.view(np.float32), extremes])
    return x[~np.isnan(x)]


@pytest.mark.parametrize("mode", ["half_up", "half_down"])
@pytest.mark.parametrize("dtype,zero_point", [("int8", 0), ("int8", -3), ("uint8", 128)])
@pytest.mark.parametrize("scale", [2.0 ** -7, 2.0 ** -4, 1.0, 8.0, 0.1234567, 3.0])
def test_short_form_gives_the_functions_codes_for_every_float32(mode, dtype, zero_point, scale):
    model = _step_model(mode, dtype, scale, zero_point)
    short = shorter_quantize_steps(model)
    inner = nm.rounding_as_quantize_linear(mode)[0]
    assert [n.op_type for n in short.graph.node] == ["Div", inner, "Add", "QuantizeLinear"] and not short.functions
    x = _hard_inputs(scale)
    want = _reference(x, mode, dtype, scale, zero_point)
    for level in ("basic", "all"):  # pow2 CPU subgraphs run at the basic level, float-scaled ones at the full
        function, shorter = _run(model, x, level), _run(short, x, level)
        assert np.array_equal(function, want)
        bad = shorter != want
        assert not bad.any(), (level, x[bad][:5], shorter[bad][:5], want[bad][:5])


@settings(max_examples=300, deadline=None)
@given(x=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64),
       fix_pos=st.integers(-4, 12), mode=st.sampled_from(["half_up", "half_down"]))
def test_short_form_equals_numerics_on_any_float32(x, fix_pos, mode):
    scale = 2.0 ** -fix_pos
    values = np.array(x, np.float32)
    got = _run(shorter_quantize_steps(_step_model(mode, "int8", scale, 0)), values, "basic")
    assert np.array_equal(got, _reference(values, mode, "int8", scale, 0))


def test_steps_it_cannot_write_keep_the_function():
    per_channel = _step_model("half_up", "int8", [0.5, 0.25], 0)
    per_channel.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([0, 1], np.int8), "z"))
    tiny = _step_model("half_up", "int8", 1e-38, 0)  # half of it is subnormal
    std = _step_model("std_round", "int8", 0.5, 0)  # ties away from zero: no such form
    for model in (per_channel, tiny, std):
        assert shorter_quantize_steps(model) is model
    computed = _step_model("half_up", "int8", 0.5, 0)
    computed.graph.node[0].input[1] = "s2"
    computed.graph.node.insert(0, helper.make_node("Identity", ["s"], ["s2"]))
    assert shorter_quantize_steps(computed) is computed


@pytest.fixture(scope="module")
def effformer_b4096(tmp_path_factory):
    return compile_effformer(tmp_path_factory, "DPUCZDX8G_ISA1_B4096")


def test_effformer_b4096_cpu_parts_quantize_in_four_nodes(effformer_b4096, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    compiled, frames = effformer_b4096
    session = npuflow.Session(compiled, threads=1)
    with mock.patch.object(executors, "shorter_quantize_steps", lambda model: model):
        functions = npuflow.Session(compiled, threads=1)  # the quantizer's function, inlined by ONNX Runtime
    ref = npuflow.Session(compiled, fuse=False)
    for x in frames:
        a, b, c = session.run(x), functions.run(x), ref.run(x)
        assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]) for k in c)
    (step,) = session._live()[0].steps
    models = [part.executor.model()[0] for part in step.executor.parts
              if isinstance(part.executor, executors.OnnxExecutor)]
    ops = [n.op_type for m in models for n in m.graph.node]
    assert not any(n.domain == qdq.DOMAIN for m in models for n in m.graph.node)  # 10 calls before
    assert ops.count("QuantizeLinear") >= 10 and "GreaterOrEqual" not in ops
