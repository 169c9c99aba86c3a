"""Round 11 of new-user flows: on a CPU target (cpu-int8) the quantizer quantizes every quantizable
node wherever it runs, so data movement after a quantized CPU op is quantized and lowered too.

A Conv1d audio classifier (``Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm``): the pooling of
a 3-D tensor stayed on the CPU (only 2-D pooling is lowered), cpu-int8's quantizer quantizes its
output anyway, and compile lowers the ``Flatten`` after it.  Since round 18 a 1-D pool runs as a
2-D one with H = 1 (``passes/ops_1d.py``), so the net here pools a 5-D view of the same features
(``Reshape`` to N x 8 x 2 x 8 x 8), which still stays on the CPU.  Check of the float model put that
``Flatten`` on the CPU ("its input comes from the CPU in float"), so check and compile disagreed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU
from tests.unit.test_placement_agreement import compiled_devices


def _audio_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 9)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array(np.array([1, 8, 2, 8, 8], np.int64), "five_d")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", strides=[2], pads=[4, 4]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "five_d"], ["r5"], name="to_5d"),
             helper.make_node("GlobalAveragePool", ["r5"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "audio1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target, flatten_side", [("cpu-int8", "ACC"), ("DPUCZDX8G_ISA1_B4096", "CPU")])
def test_check_places_flatten_after_a_quantized_cpu_pool_as_compile_does(target, flatten_side):
    model = _audio_net()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 1, 256)).astype(np.float32)} for _ in range(4)]
    report = npuflow.check(model, target)
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
    compiled = compiled_devices(npuflow.compile(npuflow.quantize(model, calib, target, warn=False).model, target))
    assert checked["gap"] == compiled["gap"] == "CPU"
    assert compiled["flatten"] == flatten_side
    assert checked["flatten"] == flatten_side, [n.reasons for n in report.nodes if n.name == "flatten"]
