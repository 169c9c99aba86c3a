"""A max / mean over a map's channels as a pool on a reshaped view (session 33, newops item 2).

CBAM's spatial attention and Triplet attention's Z-pool concatenate ``x.max(1)`` and ``x.mean(1)``
before a 7x7 conv; both reductions ran in float on the CPU on every target (round 23a).  The target
rewrite ``channel_reduction_as_pool`` (``passes/channel_pool.py``) reads N x C x H x W as
N x 1 x C x (H*W) and pools C x 1, where the target runs that form and its own reduction rule (DPU:
``input_channel < 2^12``; bernoulli2's Cross Channel Max: ``input_channel <= 64``) accepts it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.target_rewrites import target_rewrites
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

TARGETS = [("DPUCZDX8G_ISA1_B4096", "DPU"), ("bernoulli2", "BPU"), ("cpu-int8", "CPU-INT8")]


def _zpool(c: int = 16, keep: int = 1, opset: int = 13, statistic: bool = False) -> tuple[onnx.ModelProto, list[int]]:
    """Conv 3->c + ReLU, channel max and mean (``keepdims`` ``keep``; 0: Unsqueeze after), Concat, Conv 7x7 -> y.
    ``statistic``: the mean is also subtracted from the map (a normalisation's ``x - mean``)."""
    rng = np.random.default_rng(33)
    shape = [1, 3, 8, 8]
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (c, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 7, 7)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    axes_in = ["ax"] if opset >= 18 else []
    axes_attr = {} if opset >= 18 else {"axes": [1]}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("ReduceMax", ["r", *axes_in], ["mx"], name="cmax", keepdims=keep, **axes_attr),
             helper.make_node("ReduceMean", ["r", *(["ax"] if opset >= 18 else [])], ["mn"], name="cmean", keepdims=keep,
                              **axes_attr)]
    z = ["mx", "mn"]
    if not keep:
        nodes += [helper.make_node("Unsqueeze", [t, "ax"], [f"{t}1"], name=f"unsq_{t}") for t in z]
        z = [f"{t}1" for t in z]
    nodes += [helper.make_node("Concat", z, ["z"], name="cat", axis=1),
              helper.make_node("Conv", ["z", "w2"], ["y"], name="conv2", pads=[3, 3, 3, 3])]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]
    if statistic:
        nodes.append(helper.make_node("Sub", ["r", "mn"], ["centred"], name="centre"))
        outputs.append(helper.make_tensor_value_info("centred", onnx.TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "zpool", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), shape


@pytest.mark.parametrize(("opset", "keep"), [(13, 1), (13, 0), (18, 1), (18, 0)])
def test_the_pool_form_computes_the_same_values(opset, keep):
    model, shape = _zpool(keep=keep, opset=opset)
    out, done = target_rewrites(model, load_target("cpu-int8"))
    assert [(r.node, r.applied) for r in done if r.rewrite == "channel_reduction_as_pool"] == [("cmax", True),
                                                                                               ("cmean", True)]
    x = samples(shape, n=1, seed=2)[0]
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("target", "device"), TARGETS)
def test_check_places_both_reductions_on_the_accelerator(target, device):
    report = npuflow.check(_zpool()[0], target)
    assert [report.node(n).device for n in ("cmax", "cmean")] == ["NPU", "NPU"]
    assert report.node("cmax").op_type == "MaxPool"


@pytest.mark.parametrize(("target", "device"), TARGETS)
def test_a_zpool_net_is_one_subgraph_equal_to_ort_at_every_layer(target, device):
    model, shape = _zpool()
    assert_one_subgraph_equal_to_ort(model, shape, target, device)


def test_bernoulli2_keeps_a_max_over_more_than_64_channels_with_the_limit():
    report = npuflow.check(_zpool(c=80)[0], "bernoulli2")
    node = report.node("cmax")
    assert node.device == "CPU" and node.op_type == "ReduceMax"
    assert node.reasons[0] == "Input Channel: input_channel <= 64 is false (80 > 64)"
    assert report.node("cmean").device == "NPU"  # 80 = 2 x 2 x 2 x 2 x 5: the average pool cascades


def test_a_dpu_max_past_the_pool_window_stays_and_check_says_which_limit():
    node = npuflow.check(_zpool(c=300)[0], "DPUCZDX8G_ISA1_B4096").node("cmax")
    assert node.device == "CPU"
    assert node.messages == ["not rewritten (channel_reduction_as_pool): ReduceMax over 300 channels stays: "
                             "Reshape to N x 1 x 300 x 64 -> MaxPool 300x1 -> Reshape: MaxPool kernel 300x1 outside "
                             "[1,256]x[1,256]"]


def test_a_mean_a_normalisation_subtracts_stays():
    out, done = target_rewrites(_zpool(statistic=True)[0], load_target("cpu-int8"))
    assert [r.node for r in done if r.rewrite == "channel_reduction_as_pool"] == ["cmax"]
    assert [n.op_type for n in out.graph.node if n.name == "cmean"] == ["ReduceMean"]
