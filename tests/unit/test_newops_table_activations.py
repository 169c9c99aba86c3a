"""Tanh, SELU, Softplus and Mish wherever a table target evaluates them (session 33, newops2 item 1).

On an int8 input with one output scale each of them is a function of the input code alone: one
256-entry table, as ELU, Sigmoid and GELU are.  The quantizer quantized them only between two
quantized ops, so one before a ``MaxPool`` (Tanh -> MaxPool, SELU -> MaxPool) or after one (the
Softplus of a Mish, a Softplus after a pool) stayed float on the CPU, and the pool with it: 3 (2)
/ 5 (3) compiled subgraphs on bernoulli2 where one program does.  bernoulli2's BPU evaluates them
by LUT (seed 004 L1776, L1841), cpu-int8 by its lookup kernels; the Vitis AI DPUs list none of
them (UG1414's activation rows; Tanh and Sigmoid are "CPU only" in its PyTorch table).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import npuflow
from tests.compile_check import assert_one_subgraph_equal_to_ort

SHAPE = [1, 3, 8, 8]


class _Net(nn.Module):
    """conv -> f -> MaxPool 2x2 -> conv -> g -> conv 1x1 (``f``, ``g``: the activations under test)."""

    def __init__(self, first, second, pool_first: bool = False):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.first, self.second, self.pool_first = first, second, pool_first

    def forward(self, x):
        y = self.c1(x)
        y = self.first(nn.functional.max_pool2d(y, 2)) if self.pool_first else nn.functional.max_pool2d(self.first(y), 2)
        return self.c3(self.second(self.c2(y)))


NETS = {  # name -> (first, second, pool_first)
    "tanh_pool": (torch.tanh, torch.tanh, False),
    "selu_pool": (torch.selu, torch.selu, False),
    "mish": (nn.functional.mish, nn.functional.mish, False),  # Softplus -> Tanh -> Mul(x, .)
    "pool_softplus": (nn.functional.softplus, nn.functional.softplus, True),
}


def _export(name: str, opset: int = 13) -> onnx.ModelProto:
    """``NETS[name]`` exported by TorchScript (input ``x``, output ``y``)."""
    torch.manual_seed(0)
    first, second, pool_first = NETS[name]
    buf = io.BytesIO()
    torch.onnx.export(_Net(first, second, pool_first).eval(), torch.randn(*SHAPE), buf, input_names=["x"],
                      output_names=["y"], opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
def test_every_node_of_a_table_activation_net_is_placed_on_a_table_target(name, target):
    report = npuflow.check(_export(name), target)
    assert [(n.name, n.reasons) for n in report.nodes if n.device == "CPU"] == []


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize(("target", "device"), [("bernoulli2", "BPU"), ("cpu-int8", "CPU-INT8")])
def test_a_table_activation_net_is_one_subgraph_equal_to_ort_at_every_layer(name, target, device):
    assert_one_subgraph_equal_to_ort(_export(name), SHAPE, target, device)


def test_a_dpu_keeps_tanh_on_the_cpu_with_its_reason():
    report = npuflow.check(_export("tanh_pool"), "DPUCZDX8G_ISA1_B4096")
    tanh = next(n for n in report.nodes if n.op_type == "Tanh")
    assert tanh.device == "CPU"
    assert tanh.reasons == ["Tanh (tanh) has no DPU implementation on DPUCZDX8G_ISA1_B4096"]


def test_opset_18s_one_node_mish_is_one_table_named_mish():
    """torch writes Mish's pieces at every opset; ONNX's own ``Mish`` node (opset 18) is one table too."""
    from tests.unit.quant_nets import samples
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Mish", ["c1"], ["m1"], name="mish1"),
             helper.make_node("MaxPool", ["m1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "mish", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for target, device in (("bernoulli2", "BPU"), ("cpu-int8", "CPU-INT8")):
        assert npuflow.check(model, target).node("mish1").device == "NPU"
        assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)
    q = npuflow.quantize(model, [{"x": s} for s in samples(SHAPE, n=8)], target="bernoulli2", warn=False)
    ops = [op for sg in npuflow.compile(q.model, "bernoulli2").subgraphs if sg.on_accelerator for op in sg.ops]
    assert [op["kind"] for op in ops if op["op"] == "lut"] == ["mish"]
