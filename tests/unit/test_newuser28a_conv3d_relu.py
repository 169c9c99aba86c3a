"""Round 28a of new-user flows: a stereo network's 3-D cost-volume convolutions on cpu-int8.

StereoNet regularises its cost volume with ``Conv3d -> BN -> ReLU -> Conv3d``.  cpu-int8 has no 3-D
convolution, so the Conv3d runs on the CPU, yet a CPU target's quantizer quantizes it there and fuses
the ReLU into it (one quantize step, after the ReLU); compile then ran the ReLU on the CPU with its
Conv3d.  check judged the ReLU alone and put it on the accelerator: 4 subgraphs in check, 2 in
compile.  check now fuses the activation as the quantizer does on a CPU target.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow
from tests.unit.quant_nets import samples

SHAPE = [1, 4, 4, 8, 8]


def _cost_volume_convs() -> onnx.ModelProto:
    """Conv3d 3x3x3 -> Relu -> Conv3d 3x3x3 -> Relu -> Conv 1x1 on the squeezed depth sum (a 2-D tail)."""
    rng = np.random.default_rng(28)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3, 3)).astype(np.float32), "w2")]
    pads = [1, 1, 1, 1, 1, 1]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv3d_1", pads=pads),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu_1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv3d_2", pads=pads),
             helper.make_node("Relu", ["c2"], ["y"], name="relu_2")]
    graph = helper.make_graph(nodes, "cost_volume", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_check_puts_the_relu_with_its_cpu_conv3d_as_compile_does():
    model = _cost_volume_convs()
    report = npuflow.check(model, "cpu-int8")
    assert report.node("relu_1").device == "CPU" and report.node("conv3d_1").device == "CPU"
    q = npuflow.quantize(model, [{"x": x} for x in samples(SHAPE, n=4)], target="cpu-int8", warn=False)
    compiled = npuflow.compile(q.model, "cpu-int8")
    assert [sg.on_accelerator for sg in compiled.subgraphs].count(True) == report.summary["npu_subgraphs"]


def test_an_accelerator_target_judges_the_relu_as_before():
    """On an accelerator target the quantizer leaves a CPU Conv3d float and its ReLU with it: CPU too."""
    report = npuflow.check(_cost_volume_convs(), "DPUCZDX8G_ISA1_B4096")
    assert report.node("relu_1").device == "CPU" and report.summary["npu_subgraphs"] == 0
