"""A reversing ``Slice`` on the accelerator (new-user round 17: captcha-whisperer's CRNN, whose
backward LSTM is exported by ``torch.flip`` as ``Slice(starts=-1, ends=-INT64_MAX, steps=-1)``).
The lowering stored ``slice(...).indices(dim)``, whose stop -1 means "before element 0" only to
``range``: as a slice (the runtime's kernel, the fused graph's ONNX Slice) it is the last element,
so the op made an empty tensor and every ``.npuf`` with such a Slice failed to load with
``NPF_COMPILE_CORRUPT`` ("the op makes shape [0, ...]") right after compile had succeeded."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow

INT64_MAX = np.iinfo(np.int64).max


def _flip(start: int, end: int) -> onnx.ModelProto:
    """x [3, 1, 8] twice -> Concat (axis 0), Slice (axis 0, step -1), Add: all on the accelerator."""
    inits = [numpy_helper.from_array(np.array([start], np.int64), "starts"),
             numpy_helper.from_array(np.array([end], np.int64), "ends"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "steps")]
    nodes = [helper.make_node("Concat", ["x", "x"], ["r"], axis=0),
             helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["s"]),
             helper.make_node("Add", ["s", "x2"], ["y"])]
    rows = len(range(*slice(start, end, -1).indices(6)))
    graph = helper.make_graph(nodes, "flip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 8]),
                                              helper.make_tensor_value_info("x2", TensorProto.FLOAT, [rows, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("start,end", [(-1, -INT64_MAX), (5, -INT64_MAX - 1), (-2, -7), (4, 1)])
@pytest.mark.parametrize("fuse", [True, False])
def test_a_reversing_slice_compiles_runs_and_matches_ort(start, end, fuse):
    model = _flip(start, end)
    rng = np.random.default_rng(0)
    rows = model.graph.input[1].type.tensor_type.shape.dim[0].dim_value

    def sample():
        return {"x": rng.uniform(-1, 1, (3, 1, 8)).astype(np.float32),
                "x2": rng.uniform(-1, 1, (rows, 1, 8)).astype(np.float32)}

    q = npuflow.quantize(model, [sample() for _ in range(4)], "cpu-int8", warn=False)
    compiled = npuflow.compile(q, "cpu-int8")
    assert any(op["op"] == "slice" for sg in compiled.manifest["subgraphs"] if sg["engine"] == "integer"
               for op in sg["ops"])
    feed = sample()
    got = npuflow.Session(compiled, fuse=fuse).run(feed)["y"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(q.model.SerializeToString(), so).run(None, feed)[0]
    np.testing.assert_array_equal(got, want)
    reference = np.concatenate([feed["x"], feed["x"]])[slice(start, end, -1)] + feed["x2"]
    assert np.abs(got - reference).max() < 0.05
