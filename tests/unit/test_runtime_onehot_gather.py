"""A one-hot's matrix product as a row lookup (``runtime/onehot_gather``, ``numerics.one_hot_rows``): on
graphs of the joined forms Magika's first Dense takes (``Equal`` against an ``arange``, ``Where`` of two
codes, then on B4096 ``Cast`` to float, ``Reshape`` to rows, ``Gemm``/``MatMul``; on cpu-int8 ``Reshape`` to
channels-last pixels and ONNX Runtime's ``QLinearConv`` 1x1), random weights, ONNX Runtime's outputs bit for
bit before and after, every value and values outside the range; and the refusals where the table cannot be
proven equal (weights whose sums round in float32, an all-zero output's sign)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow import numerics as nm
from npuflow.runtime import onehot_gather

ROWS = 24


def _one_hot_model(weights: np.ndarray, bias: np.ndarray | None, start: int, hot: int, cold: int,
                   op: str = "Gemm") -> onnx.ModelProto:
    n, width = weights.shape
    inits = [numpy_helper.from_array(np.array([1, ROWS, 1], np.int64), "shape3"),
             numpy_helper.from_array(start + np.arange(n, dtype=np.int32).reshape(1, 1, n), "arange"),
             numpy_helper.from_array(np.array(hot, np.int8), "hot"), numpy_helper.from_array(np.array(cold, np.int8), "cold"),
             numpy_helper.from_array(np.array([-1, n], np.int64), "rows_shape"),
             numpy_helper.from_array(weights.T.copy() if op == "Gemm" else weights, "w")]
    nodes = [helper.make_node("Reshape", ["x", "shape3"], ["x3"]), helper.make_node("Equal", ["x3", "arange"], ["eq"]),
             helper.make_node("Where", ["eq", "hot", "cold"], ["codes"]),
             helper.make_node("Cast", ["codes"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["f", "rows_shape"], ["rows"])]
    if op == "Gemm":
        inputs = ["rows", "w"] + (["b"] if bias is not None else [])
        if bias is not None:
            inits.append(numpy_helper.from_array(bias, "b"))
        nodes.append(helper.make_node("Gemm", inputs, ["y"], transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["rows", "w"], ["y"]))
    for k, node in enumerate(nodes):
        node.name = f"n{k}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT32, [1, ROWS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _dyadic(rng: np.random.Generator, shape: tuple, shift: int) -> np.ndarray:
    return (rng.integers(-200, 200, size=shape) * 2.0 ** -shift).astype(np.float32)


@pytest.mark.parametrize("op,start,hot,cold,with_bias", [("Gemm", 0, 64, 0, True), ("Gemm", -3, 100, -20, True),
                                                        ("MatMul", 5, 127, -128, False)])
def test_random_weights_give_the_products_values_bit_for_bit(op, start, hot, cold, with_bias) -> None:
    rng = np.random.default_rng(7)
    n, width = 31, 16
    weights, bias = _dyadic(rng, (n, width), 7), _dyadic(rng, (width,), 9) if with_bias else None
    model = _one_hot_model(weights, bias, start, hot, cold, op)
    external: dict[str, np.ndarray] = {}
    lookup = onehot_gather.as_row_lookup(model, external)
    ops = [node.op_type for node in lookup.graph.node]
    assert op not in ops and "Equal" not in ops and "Cast" not in ops and ops[-1] == "Gather", ops
    assert "w" not in {t.name for t in lookup.graph.initializer}
    every = start + np.arange(-2, n + 2, dtype=np.int32)  # each value and two on either side of the range
    for x in [np.resize(every, (1, ROWS)), np.resize(every[::-1], (1, ROWS)),
              np.array([[np.iinfo(np.int32).min, np.iinfo(np.int32).max] * (ROWS // 2)], np.int32),
              rng.integers(start - 5, start + n + 5, size=(1, ROWS)).astype(np.int32)]:
        want, got = _run(model, x), _run(lookup, x)
        assert np.array_equal(want.view(np.int32), got.view(np.int32))  # bit for bit, the sign of a zero too


def _qlinear_conv_model(rng: np.random.Generator, n: int, width: int, hot: int, cold: int) -> onnx.ModelProto:
    f32, u8 = (lambda v, k: numpy_helper.from_array(np.array(v, np.float32), k)), \
        (lambda v, k: numpy_helper.from_array(np.array(v, np.uint8), k))
    inits = [numpy_helper.from_array(np.array([1, ROWS, 1], np.int64), "shape3"),
             numpy_helper.from_array(np.arange(n, dtype=np.int32).reshape(1, 1, n), "arange"),
             u8(hot, "hot"), u8(cold, "cold"), numpy_helper.from_array(np.array([1, ROWS, 1, n], np.int64), "pixels"),
             f32(0.02, "xs"), u8(3, "xz"),
             numpy_helper.from_array(rng.integers(-128, 128, size=(width, n, 1, 1)).astype(np.int8), "w"),
             f32(rng.uniform(0.001, 0.01, size=width), "ws"), numpy_helper.from_array(np.zeros(width, np.int8), "wz"),
             f32(0.37, "ys"), u8(117, "yz"), numpy_helper.from_array(rng.integers(-9000, 9000, size=width).astype(np.int32), "b")]
    nodes = [helper.make_node("Reshape", ["x", "shape3"], ["x3"]), helper.make_node("Equal", ["x3", "arange"], ["eq"]),
             helper.make_node("Where", ["eq", "hot", "cold"], ["codes"]),
             helper.make_node("Reshape", ["codes", "pixels"], ["rows"]),
             helper.make_node("QLinearConv", ["rows", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                              domain="com.microsoft", channels_last=1, kernel_shape=[1, 1])]
    for k, node in enumerate(nodes):
        node.name = f"n{k}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT32, [1, ROWS])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, ROWS, 1, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def test_a_channels_last_qlinear_conv_of_the_rows_is_its_own_table() -> None:
    rng = np.random.default_rng(11)
    n = 19
    model = _qlinear_conv_model(rng, n, 16, hot=200, cold=3)
    lookup = onehot_gather.as_row_lookup(model, {})
    ops = [node.op_type for node in lookup.graph.node]
    assert "QLinearConv" not in ops and "Equal" not in ops and ops[-2:] == ["Gather", "Reshape"], ops
    every = np.arange(-2, n + 2, dtype=np.int32)
    for x in [np.resize(every, (1, ROWS)), np.resize(every[::-1], (1, ROWS)),
              rng.integers(-5, n + 5, size=(1, ROWS)).astype(np.int32)]:
        want, got = _run(model, x), _run(lookup, x)
        assert want.dtype == got.dtype and want.shape == got.shape and np.array_equal(want, got)


def test_a_graph_it_cannot_prove_stays() -> None:
    rng = np.random.default_rng(3)
    full = rng.standard_normal((31, 16)).astype(np.float32)  # 24-bit mantissas: a sum of them rounds
    model = _one_hot_model(full, None, 0, 64, -3)
    assert onehot_gather.as_row_lookup(model, {}) is model


def test_the_table_refuses_rounding_sums_and_signless_zeros() -> None:
    w = np.array([[1.0, 0.0], [0.5, 0.0]], np.float32)
    table = nm.one_hot_rows(w, np.array([0.25, 1.0], np.float32), hot=4.0, cold=1.0)
    assert table.tolist() == [[4.0 + 0.5 + 0.25, 1.0], [1.0 + 2.0 + 0.25, 1.0], [1.5 + 0.25, 1.0]]
    # column 1: weights and bias zero, so each output is a sum of zeros whose sign the order decides
    assert nm.one_hot_rows(w, np.zeros(2, np.float32), hot=4.0, cold=1.0) is None
    assert nm.one_hot_rows(w, None, hot=4.0, cold=0.0) is None
    # magnitudes past 2^24 of the smallest power of two: a float32 partial sum could round
    assert nm.one_hot_rows(np.array([[2.0 ** 24], [2.0 ** -3]], np.float32), None, hot=1.0, cold=1.0) is None
    assert nm.one_hot_rows(np.array([[np.inf], [1.0]], np.float32), None, hot=1.0, cold=1.0) is None
