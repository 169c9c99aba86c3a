"""``Max``/``Min`` with a scalar constant: the clamp TensorFlow exports write after an activation
(openWakeWord's embedding model: ``Maximum(LeakyReLU(x), -0.4)`` after each of 19 convolutions).

On targets that list elementwise max/min (bernoulli2, cpu-int8) it is placed on the accelerator,
quantized with its bound kept in float (the table folds it exactly), and lowered as a lookup table
of codes, so the network stays one accelerator subgraph; with a constant of more than one value, or
on a target without the op (the DPU), it runs in float on the CPU with the reason said (of two
tensors: ``test_newops3_binary_max.py``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import run, samples


def _clamped(op: str = "Max", bound_channels: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.4, (4, 6, 3, 3)).astype(np.float32), "w2")
    bound = numpy_helper.from_array(np.full((1, bound_channels, 1, 1), -0.4 if op == "Max" else 0.7, np.float32),
                                    "bound")
    other = "bound"
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c1"], ["l1"], name="lrelu", alpha=0.2),
             helper.make_node(op, ["l1", other], ["m1"], name="clamp"),
             helper.make_node("Conv", ["m1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2, bound])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_clamp_runs_on_the_accelerator_in_one_table(target, op):
    model = _clamped(op)
    assert npuflow.check(model, target).node("clamp").device == "NPU"
    q = npuflow.quantize(model, samples([1, 3, 8, 8], n=8), target=target)
    assert "bound_quantized" not in {i.name for i in q.model.graph.initializer}  # the bound stays float
    assert q.report.outputs["y"] > 0.99
    compiled = npuflow.compile(q.model, target)
    accel = [sg for sg in compiled.manifest["subgraphs"] if sg["device"] != "CPU"]
    assert len(accel) == 1
    luts = [op_ for op_ in accel[0]["ops"] if op_["op"] == "lut"]
    assert [op_["name"] for op_ in luts] == ["lrelu", "clamp"]  # as the BPU runs them: two int8 ops
    x = samples([1, 3, 8, 8], n=1, seed=5)[0]
    diffs = compare_layerwise_with_ort(q.model, {"x": x}, target)
    assert max(diffs.values()) <= 1, diffs
    got = npuflow.Session(compiled).run({"x": x})["y"]
    ref = run(q.model, {"x": x})[0]
    assert np.abs(got - ref).max() <= 2 * np.abs(ref).max() / 127


def test_clamp_by_a_constant_tensor_or_on_the_dpu_runs_on_the_cpu():
    per_channel = npuflow.check(_clamped("Max", bound_channels=6), "cpu-int8").node("clamp")
    assert per_channel.device == "CPU" and "one tensor and a float scalar constant" in per_channel.reasons[0]
    dpu = npuflow.check(_clamped("Max"), "DPUCZDX8G_ISA1_B4096").node("clamp")
    assert dpu.device == "CPU" and "no DPU implementation" in dpu.reasons[0]
