"""The analysis score judges each model output on its own (newuser_flows4: a pose model's large
keypoint output hid its heatmaps, and ``analyze mixed-precision --min-similarity 0.9999`` read as
met while ``quantize`` reported the heatmaps at 0.99956)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from npuflow.analyze.sensitivity import SimilarityMetric, cosine, lowest_output_cosine


def _two_outputs(noise: float) -> onnx.ModelProto:
    """``big = x * 1000`` and ``small = x + noise`` (the noise a constant added to the small output)."""
    shift = helper.make_tensor("shift", TensorProto.FLOAT, [4], [noise, -noise, noise, 0.0])
    big = helper.make_tensor("k", TensorProto.FLOAT, [], [1000.0])
    nodes = [helper.make_node("Mul", ["x", "k"], ["big"]), helper.make_node("Add", ["x", "shift"], ["small"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("big", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("small", TensorProto.FLOAT, [1, 4])], [shift, big])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lowest_output_cosine_is_the_worst_output_pooled_over_feeds() -> None:
    rng = np.random.default_rng(0)
    ref = [[rng.normal(size=8) * 1000, rng.normal(size=8)] for _ in range(3)]
    got = [[r[0], r[1] + 0.5] for r in ref]
    small = cosine([g[1] for g in got], [r[1] for r in ref])
    assert lowest_output_cosine(got, ref) == small
    pooled = cosine([t for g in got for t in g], [t for r in ref for t in r])
    assert pooled > 0.9999 > small  # one vector over all outputs hides the poor one


def test_similarity_metric_scores_the_poor_output_not_the_pooled_vector() -> None:
    feeds = [{"x": np.array([[1.0, 2.0, -1.0, 0.5]], np.float32)}, {"x": np.array([[0.3, -2.0, 1.0, 1.5]], np.float32)}]
    metric = SimilarityMetric(_two_outputs(0.0), feeds)
    assert metric(_two_outputs(0.0)) > 0.999999
    score = metric(_two_outputs(0.3))
    xs = [f["x"].ravel() for f in feeds]
    expected = cosine([x + np.array([0.3, -0.3, 0.3, 0.0]) for x in xs], xs)
    assert abs(score - expected) < 1e-6
    assert score < 0.99
