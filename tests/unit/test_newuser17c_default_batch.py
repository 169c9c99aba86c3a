"""Round 17c of new-user flows: a dynamic batch the model cannot compute at 1.

mne-icalabel's ``ICLabelNet.onnx`` (in the ``mne-icalabel`` wheel; inputs ``batch x 1 x 32 x 32``,
``batch x 1 x 1 x 100`` twice) classifies each EEG component from 4 copies of its features
(x, -x, mirrored, -mirrored) and averages them with ``Reshape(.., [4, -1])``: it computes at a
batch of 4, 8, ... only.  Quantized on such batches (dynamic batch kept), ``compile`` without
``--input-shape`` froze the batch at 1 and said ``NPF_MODEL_INVALID`` "the model fails ONNX
validation ... fix the exporter", though the model is valid and the size was npuflow's choice.
The same on a minimal graph: a dynamic batch of 7-wide rows reshaped to ``[4, -1]`` and averaged.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError


def _four_copy_mean() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array([4, -1], np.int64), "four")]
    nodes = [helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=1),
             helper.make_node("Reshape", ["p", "four"], ["r"], name="by_copy"),
             helper.make_node("ReduceMean", ["r"], ["y"], name="mean", axes=[0], keepdims=0)]
    graph = helper.make_graph(nodes, "fourcopy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_default_batch_of_1_is_refused_as_the_size_with_the_input_shape_hint():
    with pytest.raises(NpuflowError) as info:
        npuflow.load(_four_copy_mean())
    assert info.value.code == "NPF_MODEL_INPUT_SIZE_UNSUPPORTED", str(info.value)
    assert "x 1x7" in info.value.message and "--input-shape" in info.value.hint


def test_the_batch_it_computes_at_loads_and_runs():
    model = npuflow.load(_four_copy_mean(), input_shapes={"x": [4, 7]})
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [7]
