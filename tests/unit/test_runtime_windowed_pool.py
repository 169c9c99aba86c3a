"""A windowed average pool of ONNX Runtime's arithmetic is part of the fused run (runtime/fused_pool.py).

EfficientFormer's token mixer (``AvgPool2d(3, 1, 1, count_include_pad=False)``) and its mean over the
tokens before the head lower on cpu-int8 to pools of ONNX Runtime's ``QLinearAveragePool`` arithmetic
(``attrs.qlinear == "window"``): a float32 sum in the kernel's order, which no graph of exact float
operations repeats, so each ran as its numpy kernel between fused runs (issue 19: the frame was three
ONNX Runtime calls and a numpy pool).  Now ``com.microsoft.QLinearAveragePool`` itself, where a check at
load shows it gives the kernel's codes; where the check fails, the kernel as before.  Either way the
Session's outputs equal the op-by-op kernels bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.runtime import fused, fused_pool
from tests.unit.quant_nets import samples

SHAPE = [1, 3, 16, 16]


def _token_mixer_net() -> onnx.ModelProto:
    """Conv 3x3 s2 -> ReLU -> x + (AveragePool 3x3 s1 p1 (count_include_pad=0) - x) -> Conv 1x1 ->
    tokens (Flatten, Transpose) -> mean over the tokens -> MatMul: EfficientFormer's stem, Meta4D
    mixer and head, small."""
    rng = np.random.default_rng(33)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.array([1], np.int64), "tok")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[3, 3], strides=[1, 1],
                              pads=[1, 1, 1, 1], count_include_pad=0),
             helper.make_node("Sub", ["p", "r"], ["d"], name="sub"),
             helper.make_node("Add", ["r", "d"], ["m"], name="add"),
             helper.make_node("Conv", ["m", "w2"], ["c2"], name="conv2"),
             helper.make_node("Flatten", ["c2"], ["f"], name="flat", axis=2),
             helper.make_node("Reshape", ["c2", "shape"], ["t0"], name="reshape"),
             helper.make_node("Transpose", ["t0"], ["t"], name="tokens", perm=[0, 2, 1]),
             helper.make_node("ReduceMean", ["t", "tok"], ["mean"], name="mean", keepdims=0),
             helper.make_node("MatMul", ["mean", "w3"], ["y"], name="head")]
    del nodes[6]  # Flatten(axis=2) is [N, C*H*W]; the tokens are a Reshape to [N, C, H*W]
    inits.append(numpy_helper.from_array(np.array([1, 8, 64], np.int64), "shape"))
    graph = helper.make_graph(nodes, "mixer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def compiled():
    q = npuflow.quantize(_token_mixer_net(), samples(SHAPE, n=8, seed=3), target="cpu-int8")
    return npuflow.compile(q.model, "cpu-int8")


def _windowed(session: npuflow.Session) -> list[str]:
    """The names of the program's windowed ``QLinearAveragePool``-arithmetic pools."""
    return [op["name"] for e in session._executors if hasattr(e, "plan")
            for op in e._ops if op["op"] == "avgpool" and op["attrs"].get("qlinear") == "window"]


def _equal_to_kernels(session: npuflow.Session, compiled) -> None:
    ref = npuflow.Session(compiled, fuse=False)
    for x in samples(SHAPE, n=4, seed=5):
        a, b = session.run({"x": x}), ref.run({"x": x})
        for k in b:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_windowed_pools_run_in_one_call_equal_to_the_kernels(compiled, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the plan built here, not one stored before
    session = npuflow.Session(compiled)
    assert len(_windowed(session)) == 2  # the token mixer and the mean over the tokens
    _equal_to_kernels(session, compiled)
    assert len(session._live()[0].steps) == 1  # one ONNX Runtime call per frame
    for e in session._executors:
        if hasattr(e, "plan"):
            assert all(isinstance(item, fused.FusedRun) for item in e.plan.items), e.plan.reasons


def test_a_failed_kernel_check_keeps_the_numpy_kernel(compiled, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    monkeypatch.setattr(fused_pool, "_kernel_matches", lambda *args: False)
    session = npuflow.Session(compiled)
    names = set(_windowed(session))
    kept = {e._ops[k]["name"] for e in session._executors if hasattr(e, "plan")
            for k in e.plan.items if isinstance(k, int)}
    assert names and names <= kept
    _equal_to_kernels(session, compiled)


def test_the_check_refuses_a_kernel_that_differs_on_one_channel(monkeypatch):
    """The load check compares ONNX Runtime's codes with the op's own kernel's on the whole sample,
    channels-first and channels-last: one output code that differs (one channel of one code, here)
    fails it, and the op keeps its kernel."""
    ep = {"acc_scale": 0.0046, "chain": [], "dtype": "uint8", "mode": "float", "result": "$x",
          "round": "half_even", "scale": 0.00195, "zp": 0}
    attrs = json.dumps({"count_include_pad": 0, "dilations": [1, 1], "kernel": [3, 3], "out_shape": [1, 8, 8, 8],
                        "pads": [1, 1, 1, 1], "real_pads": [1, 1, 1, 1], "strides": [1, 1], "x_zp": 3,
                        "qlinear": "window", "epilogue": ep})
    check = fused_pool._kernel_matches.__wrapped__
    assert check(attrs, 8, 8, "|u1")
    kernel = fused_pool.KERNELS["avgpool"]

    def one_code_off(a: dict, blobs: dict):
        run = kernel(a, blobs)

        def off(inputs: list) -> list:
            y = run(inputs)[0].copy()
            y[0, 7, 0, 0] ^= 1
            return [y]
        return off

    monkeypatch.setitem(fused_pool.KERNELS, "avgpool", one_code_off)
    assert not check(attrs, 8, 8, "|u1")
