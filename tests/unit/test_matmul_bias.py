"""``MatMul(x, W) -> Add(B)`` (torch's ``nn.Linear`` on an input of rank > 2) is one fully
connected layer with an int32 bias on every target: the checker fuses the ``Add`` into the
``MatMul``, the quantizer gives ``B`` the bias role (scale ``s_x * s_w``), the compiler lowers the
pair as one ``fc`` op, and the ``.npuf`` equals ONNX Runtime on the quantized model.  An ``Add`` of a
``[T, N]`` constant, or after a product of two activations, is not a bias."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.placement import Device
from tests.compile_check import accelerator_ops, compare_with_ort
from tests.unit.quant_nets import model_from, samples

TARGETS = ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"]
T, K, N, M = 10, 16, 32, 8


def _linear_net(batch: object = 1, rank: int = 3, bias_shape: tuple[int, ...] = (N,), bias_first: bool = False,
                bias_values: np.ndarray | None = None):
    """``x -> MatMul(W) -> Add(B) -> Relu -> MatMul(W2) -> y`` (rank 2: ``x`` is ``[T, K]``)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (K, N)).astype(np.float32)
    b = bias_values if bias_values is not None else rng.normal(0, 0.5, bias_shape).astype(np.float32)
    w2 = rng.normal(0, 0.3, (N, M)).astype(np.float32)
    add_in = ["b", "mm"] if bias_first else ["mm", "b"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc1"),
             helper.make_node("Add", add_in, ["a"], name="bias_add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    lead = [batch] if rank == 3 else []
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(w2, "w2")]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, T, K])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, T, M])])


def _shape(rank: int) -> list[int]:
    return [1, T, K] if rank == 3 else [T, K]


def _accelerator_subgraphs(report) -> int:
    return sum(1 for s in report.subgraphs if s.device != Device.CPU)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", [{}, {"rank": 2}, {"batch": "N"}, {"bias_shape": (1, N)},
                                     {"bias_shape": (1, 1, N)}, {"bias_first": True}])
def test_check_fuses_the_bias_add_into_the_matmul(target, variant):
    r = npuflow.check(_linear_net(**variant), target)
    add = r.node("bias_add")
    assert add.fused_into == "fc1" and not any("add_const" in x for x in add.reasons), add.reasons
    assert all(n.device == Device.NPU for n in r.nodes), [(n.name, n.reasons) for n in r.nodes]
    assert _accelerator_subgraphs(r) == 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", [{}, {"rank": 2}, {"bias_shape": (1, 1, N)}, {"bias_first": True}])
def test_quantize_gives_the_vector_an_int32_bias_and_compile_lowers_one_fc(target, variant):
    rank = variant.get("rank", 3)
    q = npuflow.quantize(_linear_net(**variant), samples(_shape(rank), n=8), target=target)
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    add = next(n for n in q.model.graph.node if n.op_type == "Add")
    dq = next(n for n in q.model.graph.node if n.output[0] == add.input[1])
    assert inits[dq.input[0]].dtype == np.int32 and inits[dq.input[0]].shape == (N,)
    tensors = q.info["tensors"]
    expect = np.float32(tensors["x"]["scale"]) * np.asarray(tensors["w"]["scale"], np.float32)
    np.testing.assert_allclose(inits[dq.input[1]], np.broadcast_to(expect, inits[dq.input[1]].shape), rtol=1e-6)
    mm = next(n for n in q.model.graph.node if n.op_type == "MatMul")
    assert add.input[0] == mm.output[0]  # no quantize step between the product and its bias
    assert q.report.outputs["y"] > 0.999

    compiled = npuflow.compile(q.model, target)
    assert not any(not sg.on_accelerator for sg in compiled.subgraphs)
    kinds = [op.get("kind") for op in accelerator_ops(compiled) if op.get("kind") not in ("quantize", "dequantize")]
    assert kinds == ["fc", "fc"], kinds  # the Add and the Relu are inside the first fc
    feeds = {"x": samples(_shape(rank), n=1, seed=7)[0]}
    diffs = compare_with_ort(q.model, feeds, target)
    pow2 = target != "cpu-int8"
    assert max(diffs.values()) <= (0 if pow2 else 1), diffs


def test_dynamic_batch_compiles_with_the_bias_in_the_fc():
    """A dynamic batch axis: the bias test reads the input's rank, not its sizes (quantize then
    takes the first sample's shape, as for any dynamic input)."""
    model = _linear_net(batch="N", bias_shape=(1, 1, N))
    q = npuflow.quantize(model, samples([2, T, K], n=4), target="DPUCZDX8G_ISA1_B4096")
    assert [t.name for t in q.model.graph.initializer if t.data_type == TensorProto.INT32 and t.dims == [N]] == \
        ["b_quantized"]
    compiled = npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096")
    kinds = [op.get("kind") for op in accelerator_ops(compiled) if op.get("kind") not in ("quantize", "dequantize")]
    assert kinds == ["fc", "fc"], kinds
    diffs = compare_with_ort(q.model, {"x": samples([2, T, K], n=1, seed=3)[0]}, "DPUCZDX8G_ISA1_B4096")
    assert max(diffs.values()) == 0, diffs


@pytest.mark.parametrize("target", TARGETS)
def test_a_position_embedding_is_not_a_bias(target):
    """A full ``[T, N]`` constant: added as it is today (not fused, not an int32 bias)."""
    emb = np.random.default_rng(2).normal(0, 0.5, (T, N)).astype(np.float32)
    model = _linear_net(bias_shape=(T, N), bias_values=emb)
    assert npuflow.check(model, target).node("bias_add").fused_into is None
    q = npuflow.quantize(model, samples([1, T, K], n=4), target=target)
    int32 = [t.name for t in q.model.graph.initializer if t.data_type == TensorProto.INT32]
    assert int32 == [], int32


@pytest.mark.parametrize("target", TARGETS)
def test_scores_plus_mask_is_not_a_bias(target):
    """``MatMul(q, k) -> Add(mask)``: a product of two activations has no weight, so no bias."""
    rng = np.random.default_rng(3)
    mask = rng.normal(0, 0.5, (T,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"], name="scores"),
             helper.make_node("Add", ["s", "mask"], ["y"], name="mask_add")]
    model = model_from(nodes, [numpy_helper.from_array(mask, "mask")],
                       [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, T, K]),
                        helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, K, T])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, T])])
    assert npuflow.check(model, target).node("mask_add").fused_into is None
