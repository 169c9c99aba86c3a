"""Channels-last "sandwiches": a transpose chain and its inverse around element-wise ops cancel.

Channels-last exports (tf2onnx, TFLite, madmom's beats TCN) wrap each layer in ``Transpose``
(and ``Squeeze``/``Unsqueeze`` of the batch axis) to and from NHWC and apply the activation in
between; on every target the layout ops and the activation ran in float on the CPU, cut off from
their layer (madmom's TCN: 33 / 51 / 33 subgraphs on B4096 / bernoulli2 / cpu-int8).  The float
passes (and check) move the element-wise ops, with their constants relaid, and drop both chains.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import npuflow
from npuflow.passes.layout_sandwich import cancel_layout_sandwiches
from npuflow.passes.optimize import optimize_float
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.onnx_builders import model, nhwc_sandwich_net, vi
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 8, 8]
LAYOUT = ("Transpose", "Squeeze", "Unsqueeze")


def test_the_sandwiches_cancel_and_the_values_stay_the_same():
    net = nhwc_sandwich_net()
    out = optimize_float(net)
    assert [n.op_type for n in out.graph.node if n.op_type in LAYOUT] == []
    assert [n.op_type for n in out.graph.node] == ["Conv", "Elu", "Mul", "Add", "Conv", "Relu", "MaxPool", "Conv"]
    x = samples(SHAPE, n=1, seed=4)[0]
    np.testing.assert_allclose(run(out, {"x": x})[0], run(net, {"x": x})[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_check_places_every_node_on_the_accelerator(target):
    """With an activation every target runs (ReLU; no target's YAML names ELU), nothing is left on the CPU."""
    report = npuflow.check(nhwc_sandwich_net(act="Relu"), target)
    assert [n.name for n in report.nodes if n.device != "NPU"] == []


@pytest.mark.parametrize("target, device", [("bernoulli2", "BPU"), ("cpu-int8", "CPU-INT8")])
def test_compiles_to_one_subgraph_equal_to_ort(target, device):
    assert_one_subgraph_equal_to_ort(nhwc_sandwich_net(act="Relu"), SHAPE, target, device)


def test_a_chain_that_does_not_cancel_is_left():
    """Transpose(0,2,3,1) then the same again is no identity: nothing moves."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["y"], name="t2", perm=[0, 2, 3, 1])]
    net = model(nodes, [vi("x", [1, 2, 3, 4])], [vi("y", None)])
    assert cancel_layout_sandwiches(net) is net


def test_a_constant_that_would_broadcast_a_unit_axis_is_left():
    """``x (1, 3) -> Transpose -> (3, 1) + c (1, 4)`` grows the size-1 axis: not moved (the chain stays)."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=[1, 0]),
             helper.make_node("Add", ["t", "c"], ["r"], name="add"),
             helper.make_node("Transpose", ["r"], ["y"], name="t2", perm=[1, 0])]
    net = model(nodes, [vi("x", [1, 3])], [vi("y", None)], [onnx.numpy_helper.from_array(np.ones((1, 4), np.float32), "c")])
    assert cancel_layout_sandwiches(net) is net


def test_a_per_channel_constant_is_relaid():
    """``x (1, C, H, W) -> NHWC -> * c (C,) -> NCHW``: the scale reads (1, C, 1, 1) on ``x`` itself."""
    c = np.arange(1, 4, dtype=np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["c", "t"], ["r"], name="mul"),
             helper.make_node("Transpose", ["r"], ["y"], name="t2", perm=[0, 3, 1, 2])]
    net = model(nodes, [vi("x", [1, 3, 2, 5])], [vi("y", None)], [onnx.numpy_helper.from_array(c, "c")])
    out = cancel_layout_sandwiches(net)
    assert [n.op_type for n in out.graph.node] == ["Mul"]
    assert onnx.numpy_helper.to_array(out.graph.initializer[0]).shape == (1, 3, 1, 1)
    x = samples([1, 3, 2, 5], n=1)[0]
    np.testing.assert_array_equal(run(out, {"x": x})[0], run(net, {"x": x})[0])


def test_a_layout_chain_alone_that_cancels_goes():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="t1", perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["t"], ["u"], name="t2", perm=[0, 3, 1, 2]),
             helper.make_node("Sigmoid", ["u"], ["y"], name="sig")]
    net = model(nodes, [vi("x", [1, 2, 3, 4])], [vi("y", None)])
    out = cancel_layout_sandwiches(net)
    assert [n.op_type for n in out.graph.node] == ["Relu", "Sigmoid"]
    x = samples([1, 2, 3, 4], n=1)[0]
    np.testing.assert_array_equal(run(out, {"x": x})[0], run(net, {"x": x})[0])
