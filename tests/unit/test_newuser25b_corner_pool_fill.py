"""New-user round 25b: a ``Pad`` with a ``-inf`` fill is placed as the quantizer keeps it, float on the CPU.

CornerNet's corner pooling computes a cumulative maximum by log-step shifts: ``F.pad(x, value=-inf)``,
a ``Slice`` and ``torch.maximum(x, shifted)``.  The quantizer keeps every node that writes or reads
the padded tensor's infinities float (``_keep_nonfinite_float``), so compile ran the Pads and Slices on
the CPU, while check placed them on the accelerator: "5 accelerator subgraphs" against 2 compiled on
cpu-int8.  Check now follows the fill (``operators.FILL_INPUT``) as it follows an attention mask's
``-inf``, and lets it end at the ``Max`` that drops it (``operators.NEG_INF_DROPPING_OPS``), so the
layer after the pooling stays on the accelerator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU
from tests.unit.test_placement_agreement import compiled_devices

H = 8


def _corner_pool_net() -> onnx.ModelProto:
    """x -> Conv -> Relu -> three log-step shifts along H (Pad -inf, Slice, Max) -> Conv 1x1 -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((2, 4, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["a0"], name="relu")]
    shift, k, cur = 1, 0, "a0"
    while shift < H:
        inits += [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, shift, 0], np.int64), f"pads{k}"),
                  numpy_helper.from_array(np.array([shift], np.int64), f"start{k}"),
                  numpy_helper.from_array(np.array([H + shift], np.int64), f"end{k}"),
                  numpy_helper.from_array(np.array([2], np.int64), f"axis{k}")]
        nodes += [helper.make_node("Pad", [cur, f"pads{k}", "ninf"], [f"p{k}"], name=f"pad{k}", mode="constant"),
                  helper.make_node("Slice", [f"p{k}", f"start{k}", f"end{k}", f"axis{k}"], [f"s{k}"], name=f"slice{k}"),
                  helper.make_node("Max", [cur, f"s{k}"], [f"m{k}"], name=f"max{k}")]
        cur, shift, k = f"m{k}", shift * 2, k + 1
    nodes.append(helper.make_node("Conv", [cur, "w2"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "corner_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, H, H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _checked_as_compiled(model: onnx.ModelProto, target: str) -> dict[str, str]:
    """Check's device of every node ("CPU"/"ACC"), asserted equal to where compile put it."""
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 3, H, H)).astype(np.float32)} for _ in range(4)]
    report = npuflow.check(model, target)
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
    compiled = compiled_devices(npuflow.compile(npuflow.quantize(model, calib, target, warn=False).model, target))
    assert {n: compiled.get(n) for n in checked} == checked
    return checked


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_check_places_the_minus_inf_pads_and_slices_as_compile_does(target):
    checked = _checked_as_compiled(_corner_pool_net(), target)
    assert checked["pad0"] == checked["slice0"] == "CPU"
    assert checked["head"] == checked["conv"] == "ACC"  # the fill ends at the Max that drops it


def _same_max_pool_net() -> onnx.ModelProto:
    """A TF-style "SAME" max pooling: Pad with -inf, MaxPool 3x3, then a Conv that reads finite values."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((2, 4, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Pad", ["c", "pads", "ninf"], ["p"], name="pad", mode="constant"),
             helper.make_node("MaxPool", ["p"], ["m"], name="pool", kernel_shape=[3, 3]),
             helper.make_node("Conv", ["m", "w2"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "same_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, H, H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_a_minus_inf_pad_before_max_pool_ends_at_the_pool(target):
    assert _checked_as_compiled(_same_max_pool_net(), target)["head"] == "ACC"
