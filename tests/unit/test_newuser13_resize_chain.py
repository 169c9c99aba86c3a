"""Round 13 of new-user flows: a decoder that upsamples twice in a row, ``F.interpolate(nearest,
scale_factor=2)`` then ``F.interpolate(bicubic, size=...)``, before a ``Concat`` with a skip branch.

On cpu-int8 the nearest ``Resize`` is lowered and the bicubic one runs on the CPU.  The CPU target's
quantizer quantizes every quantizable node wherever it runs, and data movement after a quantized op,
so the nearest ``Resize`` (after a quantized Conv) is quantized, the bicubic one after it too, and
``compile`` lowers the nearest one.  Check of the float model missed that the bicubic ``Resize`` is
quantized (its producer, a ``Resize``, is data movement on the accelerator rather than a quantized
compute op), called the nearest one the float tail and put it on the CPU: check and compile disagreed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU
from tests.unit.test_placement_agreement import compiled_devices


def _two_resizes() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(rng.standard_normal((3, 16, 1, 1)).astype(np.float32) * 0.2, "w3"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([1, 8, 24, 24], np.int64), "sizes")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Resize", ["r2", "", "scales"], ["up"], name="nearest", mode="nearest"),
             helper.make_node("Resize", ["up", "", "", "sizes"], ["b"], name="bicubic", mode="cubic"),
             helper.make_node("Resize", ["r1", "", "", "sizes"], ["a"], name="bilinear", mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "two_resizes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 24, 24])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", "DPUCZDX8G_ISA1_B4096"])
def test_check_places_a_resize_before_a_cpu_resize_as_compile_does(target):
    model = _two_resizes()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(4)]
    report = npuflow.check(model, target)
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
    compiled = compiled_devices(npuflow.compile(npuflow.quantize(model, calib, target, warn=False).model, target))
    if target == "cpu-int8":
        assert compiled["bicubic"] == "CPU" and compiled["nearest"] == "ACC"
    shared = sorted(set(checked) & set(compiled))
    assert len(shared) >= 8
    assert {n: checked[n] for n in shared} == {n: compiled[n] for n in shared}, \
        [(n.name, n.reasons) for n in report.nodes if n.name == "nearest"]
