"""Round 18 of new-user flows: tf2onnx's decomposed Keras PReLU as one ``PRelu`` / ``LeakyRelu``.

mne-icalabel's ``megnet.onnx`` (tf2onnx, NHWC Keras model) writes each of its 16 PReLUs as
``Relu(x) + Transpose(Transpose(Relu(Neg(x))) * -alpha)`` (2-D), ``Transpose(Relu(x)) +
Transpose(Relu(Neg(x))) * -alpha`` (1-D) or ``Relu(x) + Relu(Neg(x)) * -alpha`` (dense): five or
more nodes bernoulli2 could not place (``Neg`` has no kernel), though it runs PReLU.  The float
passes now fold each into one ``PRelu`` (``LeakyRelu`` for one slope), so on bernoulli2 the whole
network below is one accelerator subgraph (MEGnet: 23 -> 19 subgraphs, its three dense PReLUs on the
BPU); per-element slopes beyond ``PRELU_MAX_SLOPES`` (MEGnet's 120x120x25) are left as they are, and
a ``PRelu`` node with that many slopes runs in float on the CPU instead of as 92 MB of code tables.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow
from npuflow.operators import PRELU_MAX_SLOPES
from npuflow.passes.optimize import optimize_float
from npuflow.passes.prelu import fold_prelu
from tests.unit.quant_nets import run, samples

RNG = np.random.default_rng(18)


def _nhwc_block(alpha: np.ndarray, hw: int = 8, op: str = "Add") -> onnx.ModelProto:
    """Conv -> tf2onnx's PReLU on NCHW ``x`` with ``alpha`` in NHWC (``Add`` of ``-alpha`` times, or
    ``Sub`` of ``alpha`` times, the transposed ``Relu(-x)``) -> Conv."""
    c = 6
    inits = [numpy_helper.from_array(RNG.normal(0, 0.4, (c, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.normal(0, 0.4, (4, c, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array((-alpha if op == "Add" else alpha).astype(np.float32), "p_re_lu/Neg:0")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["pos"], name="p_re_lu/Relu"),
             helper.make_node("Neg", ["c1"], ["neg"], name="p_re_lu/Neg_1"),
             helper.make_node("Relu", ["neg"], ["rneg"], name="p_re_lu/Relu_1"),
             helper.make_node("Transpose", ["rneg"], ["nhwc"], name="Transpose__1", perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["nhwc", "p_re_lu/Neg:0"], ["scaled"], name="p_re_lu/mul"),
             helper.make_node("Transpose", ["scaled"], ["nchw"], name="Transpose__2", perm=[0, 3, 1, 2]),
             helper.make_node(op, ["pos", "nchw"], ["p"], name="p_re_lu/add"),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "tf2onnx_prelu",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, hw, hw])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, hw, hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def _temporal_block() -> onnx.ModelProto:
    """MEGnet's 1-D form: ``Transpose(Relu(x)) + Transpose(Relu(Neg(x))) * -alpha`` with alpha of
    shape (length, channels), x = N x C x L."""
    nodes = [helper.make_node("Relu", ["x"], ["pos"], name="relu"),
             helper.make_node("Transpose", ["pos"], ["pos_t"], name="t_pos", perm=[0, 2, 1]),
             helper.make_node("Neg", ["x"], ["neg"], name="neg"),
             helper.make_node("Relu", ["neg"], ["rneg"], name="relu_1"),
             helper.make_node("Transpose", ["rneg"], ["rneg_t"], name="t_neg", perm=[0, 2, 1]),
             helper.make_node("Mul", ["rneg_t", "minus_alpha"], ["scaled"], name="mul"),
             helper.make_node("Add", ["pos_t", "scaled"], ["y"], name="add")]
    alpha = RNG.uniform(-0.3, 0.6, (16, 4)).astype(np.float32)
    graph = helper.make_graph(nodes, "temporal", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 4])],
                              [numpy_helper.from_array(-alpha, "minus_alpha")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _same_in_float(a: onnx.ModelProto, b: onnx.ModelProto, shape: list[int]) -> None:
    x = RNG.normal(0, 1, shape).astype(np.float32)
    ya, yb = run(a, {"x": x})[0], run(b, {"x": x})[0]
    assert np.abs(ya - yb).max() <= 1e-6 * np.abs(ya).max(), np.abs(ya - yb).max()


def test_the_nhwc_block_becomes_one_prelu_with_the_slope_in_nchw():
    alpha = np.array([0.1, -0.2, 0.3, 0.05, 0.6, 0.25], np.float32)  # one per channel, tiled over H x W
    model = _nhwc_block(np.broadcast_to(alpha, (8, 8, 6)).copy())
    folded = fold_prelu(model)
    assert _ops(folded) == ["Conv", "PRelu", "Conv"]
    [prelu] = [n for n in folded.graph.node if n.op_type == "PRelu"]
    assert prelu.name == "p_re_lu/add" and prelu.output[0] == "p"
    slope = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}[prelu.input[1]]
    np.testing.assert_array_equal(slope.reshape(-1), alpha)
    assert slope.shape == (1, 6, 1, 1)  # reduced along the axes it does not vary on
    _same_in_float(model, folded, [1, 3, 8, 8])


def test_on_bernoulli2_the_folded_block_is_one_bpu_subgraph_as_ort_computes_it():
    model = _nhwc_block(RNG.uniform(0.0, 0.4, (1, 1, 6)).astype(np.float32))
    assert npuflow.check(model, "bernoulli2").node("p_re_lu/add").device == "NPU"
    q = npuflow.quantize(model, samples([1, 3, 8, 8], n=8), target="bernoulli2")
    assert "Neg" not in _ops(q.model) and q.report.outputs["y"] > 0.99
    compiled = npuflow.compile(q.model, "bernoulli2")
    assert [sg["device"] for sg in compiled.manifest["subgraphs"]] == ["BPU"]
    x = samples([1, 3, 8, 8], n=1, seed=3)[0]
    ref = run(q.model, {"x": x})[0]
    assert np.abs(npuflow.Session(compiled).run({"x": x})["y"] - ref).max() <= 2 * np.abs(ref).max() / 127


def test_the_temporal_form_folds_with_the_positive_branch_transpose_after_it():
    model = _temporal_block()
    folded = fold_prelu(model)
    assert _ops(folded) == ["PRelu", "Transpose"]
    _same_in_float(model, folded, [1, 4, 16])


def test_one_slope_subtracted_becomes_a_leaky_relu():
    model = _nhwc_block(np.full((1,), 0.1015625, np.float32), op="Sub")
    folded = optimize_float(model)
    [leaky] = [n for n in folded.graph.node if n.op_type == "LeakyRelu"]
    assert leaky.attribute[0].f == 0.1015625 and "Neg" not in _ops(folded)
    _same_in_float(model, folded, [1, 3, 8, 8])


def test_per_element_slopes_beyond_the_table_limit_stay_as_they_are():
    hw = 32  # 32 x 32 x 6 = 6144 slopes
    assert hw * hw * 6 > PRELU_MAX_SLOPES
    model = _nhwc_block(RNG.uniform(0.0, 0.4, (hw, hw, 6)).astype(np.float32), hw=hw)
    assert _ops(fold_prelu(model)) == _ops(model)


def test_a_prelu_node_with_more_slopes_than_the_limit_runs_in_float_on_the_cpu():
    """A PRelu written as one node with a slope per element: before, 6144 code tables of 256
    entries; now the checker and the compiler both keep it on the CPU, in float, as ORT runs it."""
    hw = 32
    model = _nhwc_block(np.zeros((1,), np.float32), hw=hw)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    del model.graph.node[:]
    model.graph.node.extend([convs[0], helper.make_node("PRelu", ["c1", "slope"], ["p"], name="prelu"), convs[1]])
    model.graph.initializer.append(numpy_helper.from_array(RNG.uniform(0.0, 0.4, (6, hw, hw)).astype(np.float32),
                                                           "slope"))
    found = npuflow.check(model, "bernoulli2").node("prelu")
    assert found.device == "CPU" and "6144 slopes" in " ".join(found.reasons), found.reasons
    q = npuflow.quantize(model, samples([1, 3, hw, hw], n=8), target="bernoulli2")
    compiled = npuflow.compile(q.model, "bernoulli2")
    lowered = [o["name"] for sg in compiled.manifest["subgraphs"] if sg["device"] != "CPU" for o in sg["ops"]]
    assert "conv1" in lowered and "prelu" not in lowered
    x = samples([1, 3, hw, hw], n=1, seed=4)[0]
    ref = run(q.model, {"x": x})[0]
    assert np.abs(npuflow.Session(compiled).run({"x": x})["y"] - ref).max() <= 2 * np.abs(ref).max() / 127
