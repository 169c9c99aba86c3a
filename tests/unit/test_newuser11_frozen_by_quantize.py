"""Round 11 of new-user flows: NudeNet's YOLOv8 (dynamic batch) quantized with ``--input-shape images
1x3x320x320`` and compiled at batch 2 was refused with ``NPF_MODEL_FIXED_INPUT_SHAPE`` blaming a
Reshape to ``[1, 82, -1]`` as "an export traced at that size": the source computes that shape, and
quantize's ``--input-shape`` froze and folded it.  The quantized model now records the dimensions
quantize froze, and the refusal says to quantize without ``--input-shape``.  The same on a small
dynamic-batch net that flattens its features (``Shape -> Gather -> Concat -> Reshape``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError

T = "DPUCZDX8G_ISA1_B4096"


def _dynamic_batch_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2, "w"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["b"], name="batch", axis=0),
             helper.make_node("Concat", ["b", "minus_one"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["r", "target"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "dynbatch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calib() -> list[dict]:
    return [{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)} for i in range(2)]


def test_compiling_at_another_batch_names_quantizes_freeze(tmp_path):
    q = npuflow.quantize(_dynamic_batch_net(), _calib(), T, input_shapes={"x": [1, 3, 8, 8]}, warn=False)
    q.save(str(tmp_path))
    with pytest.raises(NpuflowError) as info:
        npuflow.compile(str(tmp_path / "quantized_model.onnx"), T, input_shapes={"x": [2, 3, 8, 8]})
    assert info.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE"
    assert "npuflow quantize --input-shape froze" in info.value.message, info.value.message
