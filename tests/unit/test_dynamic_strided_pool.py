"""A strided ``AveragePool`` of a map whose height the graph leaves dynamic (PP-OCRv4 rec's last pool:
3 x 2, stride 3 x 2, over 3 rows at height 48) on bernoulli2, whose pools take stride 1 or 2.

Judged at the shape quantize freezes the graph at, the target rewrite writes the two-node form
(stride-1 pool, 1 x 1 subsampling), exact at every height; before, it left the dynamic graph as it
was while check of the frozen view rewrote it, so check placed the pool on the BPU and compile on
the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.target_rewrites import target_rewrites
from npuflow.targets import load_target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_placement_agreement import _sides, compiled_devices  # noqa: E402

TARGET = "bernoulli2"


def _model() -> onnx.ModelProto:
    """Conv 3x3 stride (16, 1) (48 rows -> 3), then the 3 x 2 stride 3 x 2 pool, then a 1x1 Conv."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) / 3).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[16, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[3, 2], strides=[3, 2]),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="head", kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_dynamic_pool_gets_the_form_exact_at_every_height():
    model = _model()
    same, left = target_rewrites(model, load_target(TARGET))
    assert [n.op_type for n in same.graph.node] == [n.op_type for n in model.graph.node] and left == []
    out, done = target_rewrites(model, load_target(TARGET), {"x": [1, 3, 48, 32]})
    assert [(r.node, r.applied) for r in done] == [("pool", True)]
    assert [(n.name, n.op_type) for n in out.graph.node][2:4] == [("pool/stride1", "AveragePool"), ("pool", "MaxPool")]
    rng = np.random.default_rng(1)
    for h, w in ((48, 32), (96, 40), (144, 18)):  # 3, 6 and 9 rows: the window covers the height at 48 only
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-5, atol=1e-6)


def test_check_of_the_frozen_model_places_as_compile_lowers():
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 3, 48, 32)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_model(), calib, TARGET, warn=False)
    checked = _sides(npuflow.check(q.float_model, TARGET))
    compiled = compiled_devices(npuflow.compile(q.model, TARGET))
    assert checked["pool"] == compiled["pool"] == "ACC"
    assert {n: (s, compiled[n]) for n, s in checked.items() if n in compiled and compiled[n] != s} == {}
    fixed = npuflow.quantize(_model(), calib, TARGET, input_shapes={"x": [1, 3, 48, 32]}, warn=False)
    assert len(npuflow.compile(fixed.model, TARGET).subgraphs) == len(npuflow.compile(q.model, TARGET).subgraphs)
