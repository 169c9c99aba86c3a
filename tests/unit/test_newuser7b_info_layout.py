"""`npuflow info` names the layout of an input the model transposes to channels first itself
(newuser_flows7b: an NHWC uint8 image with Cast + Transpose + normalisation in the graph was listed
as ``1x16x16x3 NCHW``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _model(nhwc: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    shape = [1, 8, 8, 3] if nhwc else [1, 3, 8, 8]
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT)]
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["f"], ["chw"], perm=[0, 3, 1, 2]))
    nodes += [helper.make_node("Conv", ["chw" if nhwc else "f", "w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "img", [helper.make_tensor_value_info("img", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("nhwc", [True, False])
def test_input_layout_follows_the_models_own_transpose(nhwc):
    model = _model(nhwc)
    shape = model.graph.input[0].type.tensor_type.shape
    dims = [d.dim_value for d in shape.dim]
    rng = np.random.default_rng(1)
    samples = [{"img": rng.integers(0, 255, dims).astype(np.uint8)} for _ in range(4)]
    q = npuflow.quantize(model, samples, "DPUCZDX8G_ISA1_B4096", warn=False)
    compiled = npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096")
    (entry,) = compiled.manifest["inputs"]
    assert entry["layout"] == ("NHWC" if nhwc else "NCHW")
