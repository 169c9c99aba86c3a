"""Round 11 of new-user flows: a model with dynamic height and width asked a size it cannot compute at.

NudeNet's YOLOv8 (in the ``nudenet`` wheel; input ``batch x 3 x height x width``) asked
``--input-shape images 1x3x321x321`` joins a 21-row and a 22-row feature map in a ``Concat``; check
said ``NPF_MODEL_INVALID`` "the model fails ONNX validation ... fix the exporter", though the model
is valid and works at 320.  The same on a small U-Net-style graph: a stride-2 ``Conv``, a 2x
``Resize`` and a ``Concat`` with the full-size features, dynamic height and width.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError


def _skip_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2, "w"),
             numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["d"], name="down", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["d", "roi", "scales"], ["u"], name="up", mode="nearest"),
             helper.make_node("Concat", ["u", "x"], ["y"], name="skip", axis=1)]
    dims = [1, 3, "h", "w"]
    graph = helper.make_graph(nodes, "skipnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, "h", "w"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_odd_size_the_model_cannot_join_is_refused_as_the_size_not_the_model():
    with pytest.raises(NpuflowError) as info:
        npuflow.check(_skip_net(), "DPUCZDX8G_ISA1_B4096", input_shapes={"x": [1, 3, 33, 33]})
    assert info.value.code == "NPF_MODEL_INPUT_SIZE_UNSUPPORTED", str(info.value)
    assert "x 1x3x33x33" in info.value.message and "divisible by its total stride" in info.value.hint


def test_an_even_size_still_checks_and_compiles():
    model = _skip_net()
    report = npuflow.check(model, "DPUCZDX8G_ISA1_B4096", input_shapes={"x": [1, 3, 32, 32]})
    assert len(report.nodes) == 3
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(2)]
    q = npuflow.quantize(model, calib, "DPUCZDX8G_ISA1_B4096", warn=False)
    out = npuflow.Session(npuflow.compile(q, "DPUCZDX8G_ISA1_B4096")).run(calib[0])
    assert np.asarray(out["y"]).shape == (1, 7, 32, 32)
