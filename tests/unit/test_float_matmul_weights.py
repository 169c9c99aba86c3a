"""A float ``MatMul``/``Gemm`` whose weight is a dequantize step of 8-bit constants runs as the model writes
it in npuflow's sessions at ONNX Runtime's default level (float-scale CPU subgraphs).

ONNX Runtime 1.32 fuses such a layer into ``com.microsoft.MatMulNBits``, which quantizes the float input
to int8 on every run: a Brevitas QCDQ classifier's ``Linear`` (a weight ``DequantizeLinear -> Transpose
-> MatMul``) moved 0.0024 off the model on cpu-int8 once the weight's steps shared the layer's CPU
subgraph (session 36, the ERFNet partition fix a7474cf; ``tests/models/test_brevitas_qcdq_agree.py``).
``ort_session.float_matmul_weights`` writes those weights as int32 codes dequantized after their moves."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow import ort_kernels
from npuflow.ort_session import NBITS_MATMUL, float_matmul_weights, open_session


def _layer(op: str, transposed: bool, dtype: type, per_channel: bool, rows: int, seed: int) -> onnx.ModelProto:
    """``op(x, [Transpose](DequantizeLinear(w)))`` with random 8-bit codes and a nonzero zero point."""
    rng = np.random.default_rng(seed)
    k, n = 96, 40
    info = np.iinfo(dtype)
    w = rng.integers(info.min, info.max + 1, (n, k) if transposed else (k, n)).astype(dtype)
    size = n if per_channel else 1
    scale = (rng.random(size) * 0.05 + 1e-3).astype(np.float32)
    zero = rng.integers(info.min // 2, info.max // 2, size).astype(dtype)
    if not per_channel:
        scale, zero = scale.reshape(()), zero.reshape(())
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], name="dq", axis=0 if transposed else 1)]
    weight = "wf"
    if transposed:
        nodes.append(helper.make_node("Transpose", ["wf"], ["wt"], name="t", perm=[1, 0]))
        weight = "wt"
    nodes.append(helper.make_node(op, ["x", weight], ["y"], name="fc"))
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _as_written(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime with every graph optimisation off: the model's own arithmetic."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


CASES = [("MatMul", False, np.int8, False, 1), ("MatMul", False, np.uint8, True, 5),
         ("MatMul", True, np.int8, False, 1), ("MatMul", True, np.uint8, False, 3), ("Gemm", False, np.int8, True, 1)]


@pytest.mark.parametrize("op, transposed, dtype, per_channel, rows", CASES)
def test_a_float_layer_on_dequantized_constants_runs_as_the_model_writes_it(op, transposed, dtype, per_channel, rows):
    model = _layer(op, transposed, dtype, per_channel, rows, seed=rows + 7 * transposed)
    assert ort_kernels.kernels(model, "all").get(("com.microsoft", NBITS_MATMUL)) == 1  # what ORT does unasked
    x = (np.random.default_rng(1).standard_normal((rows, 96)) * 3).astype(np.float32)
    got = open_session(model, level="all", threads=1).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, _as_written(model, x))
    kept = float_matmul_weights(model, "all")
    assert ("com.microsoft", NBITS_MATMUL) not in ort_kernels.kernels(kept, "all")
    assert any(n.op_type == "DequantizeLinear" for n in kept.graph.node)  # dequantized per run, not a float constant


def test_models_ort_does_not_fuse_are_left_alone():
    model = _layer("MatMul", False, np.int8, False, 1, seed=0)
    assert float_matmul_weights(model, "basic") is model  # the rule is the default level's only
    quantized_input = _layer("MatMul", False, np.int8, False, 1, seed=0)
    g = quantized_input.graph
    g.initializer.extend([numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                          numpy_helper.from_array(np.array(0, np.uint8), "xz")])
    g.node.insert(0, helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dqx"))
    g.node[-1].input[0] = "xd"  # two dequantized inputs: ORT's integer MatMul, which the runtime follows
    assert float_matmul_weights(quantized_input, "all") is quantized_input
