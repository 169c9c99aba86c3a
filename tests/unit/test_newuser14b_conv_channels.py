"""``npuflow.check`` with ``input_shapes`` asking another channel count than the first
convolution's weights take (new-user round 14b): ONNX shape inference does not compare a Conv's
input channels with its weights, so ``check(mnist, "cpu-int8", {"input": [1, 3, 28, 28]})``
placed all 13 nodes on the accelerator without a word, for a model ONNX Runtime refuses to run
("Input channels C is not equal to kernel channels * group")."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from tests.fixture_models import mnist_cnn


def test_three_channels_for_a_one_channel_conv_are_refused():
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.check(mnist_cnn(), "cpu-int8", {"input": [1, 3, 28, 28]})
    assert err.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE"
    assert "(Conv) has weights for 1 input channel(s)" in err.value.message


def test_the_channels_its_weights_take_are_fine():
    assert npuflow.check(mnist_cnn(), "cpu-int8", {"input": [1, 1, 28, 28]}).summary["npu_nodes"] == 13


def test_a_grouped_conv_after_a_normalisation_counts_groups():
    """``x - mean`` (one scalar mean: any channel count broadcasts) then a Conv with group 2 over
    weights of 2 channels per group: it takes 4 channels, so a 2-channel input is refused."""
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    mean = numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "mean")
    nodes = [helper.make_node("Sub", ["x", "mean"], ["c"], "norm"),
             helper.make_node("Conv", ["c", "w"], ["y"], "conv", group=2, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, mean])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.check(model, "cpu-int8", {"x": [1, 2, 8, 8]})
    assert "'conv' (Conv) has weights for 4 input channel(s)" in err.value.message
