"""A ``Split`` along a known axis whose channel axis is the dynamic batch (newuser_flows27: CoAtNet-lite's
``q, k, v = qkv.reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)``, TorchScript with dynamic batch, unbinds axis 0
of a ``3 x B x h x N x d`` tensor).  Before, ``quantize`` for bernoulli2 stopped with
``NPF_TARGET_FORMULA_BOUND`` "'axis != 1 or input_channel % num_outputs == 0' cannot be evaluated: strings
cannot take part in arithmetic": ``passes/split_slices`` judged the split with the symbolic batch name as its
channel count, while ``check`` (at the frozen shape) had placed it without complaint.  Now the pass judges a
dynamic graph's split at the frozen input shape, as check and compile see it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _qkv_split() -> onnx.ModelProto:
    """x (B, 8, 12) -> MatMul(12 x 24) -> Reshape (B, 8, 3, 8) -> Transpose (2, 0, 1, 3) -> Split axis 0 into 3
    -> q + k + v (each (1, B, 8, 8)) -> MatMul (8 x 4) -> y, with ``B`` dynamic."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (12, 24)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 8, 3, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 1, 1], np.int64), "parts"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="qkv"),
             helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], name="permute", perm=[2, 0, 1, 3]),
             helper.make_node("Split", ["t", "parts"], ["q", "k", "v"], name="unbind", axis=0),
             helper.make_node("Add", ["q", "k"], ["qk"], name="add1"),
             helper.make_node("Add", ["qk", "v"], ["s"], name="add2"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "batch", 8, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("target", ["bernoulli2", "DPUCZDX8G_ISA1_B4096"])
def test_split_of_a_dynamic_batch_tensor_quantizes(target):
    model = _qkv_split()
    rng = np.random.default_rng(1)
    samples = [{"x": rng.normal(0, 1, (1, 8, 12)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, samples, target=target, warn=False)
    float_sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = npuflow.Session(npuflow.compile(q.model, target)).run(samples[0])["y"]
    ref = float_sess.run(None, samples[0])[0]
    cos = float(got.ravel() @ ref.ravel() / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cos > 0.99, cos
