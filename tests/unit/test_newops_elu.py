"""ELU on the accelerators that evaluate activations by lookup table (session 33, newops item 1).

madmom's beats TCN and key CNN put an ``Elu`` after every conv; no target listed it, so each ELU
(and a ``MaxPool`` after one) was a float CPU round trip between integer convs (round 23b: 33 / 51
/ 33 compiled subgraphs on B4096 / bernoulli2 / cpu-int8).  On an int8 input with one output scale
ELU is a function of the input code alone: one 256-entry table, as Sigmoid, Tanh and GELU are.
bernoulli2's BPU evaluates such activations by LUT (seed 004 L1776, L1841) and cpu-int8 by its
lookup kernels; the Vitis AI DPUs have no ELU (UG1414's activation rows), so it stays on the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from tests.compile_check import assert_one_subgraph_equal_to_ort

SHAPE = [1, 3, 8, 8]


def _elu_net(pool: bool = True) -> onnx.ModelProto:
    """Conv -> Elu(1.0) [-> MaxPool 2x2] -> Conv -> Elu(0.5) -> Conv 1x1, opset 13."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (8,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Elu", ["c1"], ["e1"], name="elu1", alpha=1.0)]
    last = "e1"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["e1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        last = "p1"
    nodes += [helper.make_node("Conv", [last, "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Elu", ["c2"], ["e2"], name="elu2", alpha=0.5),
              helper.make_node("Conv", ["e2", "w3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "elu", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
def test_elu_and_the_max_pool_after_it_are_placed_on_a_table_target(target):
    report = npuflow.check(_elu_net(), target)
    assert [report.node(n).device for n in ("elu1", "pool", "elu2")] == ["NPU"] * 3
    assert report.node("elu1").op_kind == "elu"


def test_a_dpu_keeps_elu_on_the_cpu_with_its_reason():
    report = npuflow.check(_elu_net(), "DPUCZDX8G_ISA1_B4096")
    assert report.node("elu1").device == "CPU"
    assert report.node("elu1").reasons == ["Elu (elu) has no DPU implementation on DPUCZDX8G_ISA1_B4096"]


@pytest.mark.parametrize(("target", "device", "pool"), [("bernoulli2", "BPU", True), ("bernoulli2", "BPU", False),
                                                         ("cpu-int8", "CPU-INT8", True)])
def test_an_elu_net_is_one_subgraph_equal_to_ort_at_every_layer(target, device, pool):
    assert_one_subgraph_equal_to_ort(_elu_net(pool), SHAPE, target, device)


def test_the_compiled_table_is_named_elu():
    from tests.unit.quant_nets import samples
    q = npuflow.quantize(_elu_net(), samples(SHAPE, n=8), target="bernoulli2")
    ops = [op for sg in npuflow.compile(q.model, "bernoulli2").subgraphs if sg.on_accelerator for op in sg.ops]
    assert [op["kind"] for op in ops if op["op"] == "lut"] == ["elu", "elu"]
