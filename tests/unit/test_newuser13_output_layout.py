"""Round 13 of new-user flows: a TF/TFLite-style model fed NHWC images, ``x.permute(0, 3, 1, 2)`` at the
start and ``.permute(0, 2, 3, 1)`` at the end, so its output is channels last too.

``npuflow info`` listed the input as NHWC but the ``1x16x16x4`` output as NCHW (every output was
NCHW), telling the application it has 16 channels of 16x4 maps.  An output the model transposes to
channels last is NHWC; one it leaves channels first stays NCHW.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _nhwc_net(last_perm: list[int] | None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w")]
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r" if last_perm else "y"], name="relu")]
    shape = [1, 4, 8, 8]
    if last_perm:
        nodes.append(helper.make_node("Transpose", ["r"], ["y"], name="to_out", perm=last_perm))
        shape = [shape[p] for p in last_perm]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("last_perm, layout", [([0, 2, 3, 1], "NHWC"), (None, "NCHW"), ([0, 1, 3, 2], "NCHW")])
@pytest.mark.parametrize("target", ["bernoulli2", "DPUCZDX8G_ISA1_B4096"])
def test_an_output_transposed_to_channels_last_is_nhwc(target, last_perm, layout):
    model = _nhwc_net(last_perm)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 16, 16, 3), dtype=np.float32)} for _ in range(4)]
    compiled = npuflow.compile(npuflow.quantize(model, calib, target, warn=False).model, target)
    assert compiled.manifest["inputs"][0]["layout"] == "NHWC"
    assert compiled.manifest["outputs"][0]["layout"] == layout
