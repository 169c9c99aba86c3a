"""A CPU part's older-opset node that means the same in the joined opset joins (``runtime/joined._restated``,
issue 19): PP-OCR cls quantized without ``input_shapes`` (its batch and width free) ends its CPU subgraph
with an opset-13 ``Reshape``, which opset 14 gave ``allowzero`` (default 0: a 0 dimension copies the input's,
as opset 13 always did); the frame was two ONNX Runtime calls, the fused run and the softmax part, where
the same model quantized with fixed shapes is one."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

import npuflow
from npuflow.runtime import joined
from tests import fixture_models
from tests.unit.test_runtime_joined import _float, _part


def test_cls_quantized_with_free_shapes_is_one_onnxruntime_call_equal_to_the_kernels():
    rng = np.random.default_rng(0)
    shape = [1, 3, 48, 192]
    samples = [{"x": rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(str(fixture_models.ppocr_cls()), samples, target="cpu-int8")
    compiled = npuflow.compile(quantized.model, "cpu-int8")
    assert [s.op_counts.get("Reshape", 0) for s in compiled.subgraphs if not s.on_accelerator] == [1]  # the form
    session, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined) and step.indices == (0, 1)
    for x in [*samples, {"x": np.full(shape, 50.0, np.float32)}]:
        a, b = session.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in b)


def test_an_opset_13_reshape_joins_an_opset_18_graph_with_its_meaning():
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "s")
    relu = _part([helper.make_node("Relu", ["x"], ["y"])], [_float("x", [2, 3, 2])], [_float("y", [2, 3, 2])])
    reshape = _part([helper.make_node("Reshape", ["y", "s"], ["z"])], [_float("y", [2, 3, 2])], [_float("z", [2, 6])],
                    [shape], opset=13)
    model, _, _ = joined._join([relu, reshape], ["z"])
    (node,) = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert not node.attribute  # allowzero left at its default: the 0 copies dimension 0
    x = np.arange(-6, 6, dtype=np.float32).reshape(2, 3, 2)
    (z,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(z, np.maximum(x, 0).reshape(2, 6))
