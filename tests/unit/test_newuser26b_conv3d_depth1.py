"""Round 26b of new-user flows: RivaGAN's depth-1 ``Conv3d`` layers on the accelerator.

RivaGAN (invisible-watermark 0.2.0) runs its frames as N x C x 1 x H x W through ``Conv3d`` with kernel
1 x 11 x 11: each is a 2-D convolution, but check read "conv3d has no DPU implementation" and they ran in
float on the CPU on every target (bernoulli2: 14 subgraphs for 8 accelerator nodes).  The float passes
now write such a convolution as ``Squeeze -> Conv 2-D -> Unsqueeze`` (``passes/conv3d.py``), in check and
quantize alike.  The same on a minimal graph: ``Conv(x[1, 3, 1, 16, 16], W[8, 3, 1, 3, 3]) -> Relu``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.conv3d import depth1_conv3d_as_2d
from npuflow.passes.optimize import optimize_float
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 1, 16, 16]


def _frame_conv(kernel_depth: int = 1, depth: int = 1, pads: list[int] | None = None, opset: int = 17,
                shared: bool = False) -> onnx.ModelProto:
    """``Conv3d`` (kernel ``kernel_depth`` x 3 x 3, pads 1 on H and W, bias) -> ReLU [-> the same weight again]."""
    rng = np.random.default_rng(26)
    shape = [1, 3, depth, 16, 16]
    out = 3 if shared else 8
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (out, 3, kernel_depth, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (out,)).astype(np.float32), "b")]
    pads = pads or [0, 1, 1, 0, 1, 1]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=pads, kernel_shape=[kernel_depth, 3, 3]),
             helper.make_node("Relu", ["c"], ["r" if shared else "y"], name="relu")]
    if shared:
        nodes.append(helper.make_node("Conv", ["r", "w", "b"], ["y"], name="conv2", pads=pads))
    graph = helper.make_graph(nodes, "rivagan_frame", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("shared", [False, True])
def test_a_depth1_conv3d_is_the_same_2d_conv_on_a_squeezed_view(opset, shared):
    model = _frame_conv(opset=opset, shared=shared)
    rewritten = depth1_conv3d_as_2d(model)
    block = ["Squeeze", "Conv", "Unsqueeze"]
    assert [n.op_type for n in rewritten.graph.node] == block + ["Relu"] + (block if shared else [])
    assert [i.dims for i in rewritten.graph.initializer if i.name.startswith("w")] == [[3 if shared else 8, 3, 3, 3]]
    x = samples(SHAPE, n=1)[0]
    expected = run(model, {"x": x})[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(run(optimize_float(model), {"x": x})[0], expected, rtol=1e-6, atol=1e-6)


def test_a_depth1_batchnorm_is_a_2d_one_on_the_squeezed_view():
    model = _frame_conv()
    rng = np.random.default_rng(5)
    for name in ("gamma", "beta", "mean"):
        model.graph.initializer.append(numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), name))
    model.graph.initializer.append(numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "var"))
    model.graph.node[1].output[0] = "r"
    model.graph.node.append(helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["y"], name="bn"))
    rewritten = depth1_conv3d_as_2d(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Squeeze", "Conv", "Unsqueeze", "Relu",
                                                         "Squeeze", "BatchNormalization", "Unsqueeze"]
    x = samples(SHAPE, n=1)[0]
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6, atol=1e-6)
    report = npuflow.check(model, "cpu-int8")
    assert report.node("bn").device != "CPU"
    q = npuflow.quantize(model, [{"x": x} for x in samples(SHAPE, n=8)], target="cpu-int8", warn=False)
    compiled = npuflow.compile(q.model, "cpu-int8")
    assert [sg.on_accelerator for sg in compiled.subgraphs].count(True) == report.summary["npu_subgraphs"] == 1


@pytest.mark.parametrize("model", [_frame_conv(kernel_depth=3, depth=3, pads=[1, 1, 1, 1, 1, 1]),
                                   _frame_conv(depth=2), _frame_conv(pads=[1, 1, 1, 1, 1, 1])],
                         ids=["deep_kernel", "deep_input", "depth_padding"])
def test_a_real_3d_conv_is_left_alone(model):
    assert [n.op_type for n in depth1_conv3d_as_2d(model).graph.node] == ["Conv", "Relu"]


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_the_frame_conv_runs_on_the_accelerator_and_check_agrees_with_compile(target):
    model = _frame_conv()
    report = npuflow.check(model, target)
    assert report.node("conv").device != "CPU", report.node("conv")
    calib = samples(SHAPE, n=8)
    q = npuflow.quantize(model, [{"x": x} for x in calib], target=target, warn=False)
    compiled = npuflow.compile(q.model, target)
    # the squeeze of the float input runs before the input's quantisation, on the CPU, as check says
    subgraphs = compiled.manifest["subgraphs"]
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [False, True]
    assert [op["name"] for op in subgraphs[1]["ops"]][:3] == ["conv", "conv/unsqueeze", "relu"]
    assert subgraphs[0]["op_counts"].pop("Squeeze") == 1 and sum(subgraphs[0]["op_counts"].values()) == 1  # + quantize
    assert report.summary["npu_subgraphs"] == 1 and report.summary["cpu_op_types"] == {"Squeeze": 1}
    x = samples(SHAPE, n=1, seed=3)[0]
    np.testing.assert_array_equal(npuflow.Session(compiled).run({"x": x})["y"], run(q.model, {"x": x})[0])
