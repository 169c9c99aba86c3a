"""Round 28c: a probability output (float values in [0, 1]: a Sigmoid's scores) near 0.5 with a small
spread passed the accuracy check by its cosine around zero (SCRFD's face scores: 0.998, with single
scores off by 0.10-0.21; YOLOv7's objectness / class columns: 0.998, around their mean 0.95-0.97).
``NPF_QUANT_PROBABILITY_ERROR`` judges such values around their mean and by their largest error;
a probability map that spreads over [0, 1] and moves little, and values outside [0, 1], stay quiet."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from npuflow.quant.report import QuantReport, judge_outputs


def _model(body: list[onnx.NodeProto], width: int) -> onnx.ModelProto:
    graph = helper.make_graph(body, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, width])],
                              [helper.make_tensor("k", TensorProto.FLOAT, [], [0.2]),
                               helper.make_tensor("step", TensorProto.FLOAT, [], [3.0]),
                               helper.make_tensor("sharp", TensorProto.FLOAT, [], [4.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scores(coarse: bool, scale: str = "k", width: int = 1) -> onnx.ModelProto:
    """``Sigmoid(scale * x)``; ``coarse``: ``x`` rounded to a grid of 3 first (a quantized logit's error)."""
    nodes = [helper.make_node("Div", ["x", "step"], ["d"]), helper.make_node("Round", ["d"], ["r"]),
             helper.make_node("Mul", ["r", "step"], ["g"])] if coarse else [helper.make_node("Identity", ["x"], ["g"])]
    return _model([*nodes, helper.make_node("Mul", ["g", scale], ["l"]), helper.make_node("Sigmoid", ["l"], ["y"])], width)


def _judge(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, width: int = 1) -> QuantReport:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-3, 3, (1, 64, width)).astype(np.float32)} for _ in range(8)]
    report = QuantReport()
    judge_outputs(report, float_model, quant_model, samples, 0.01, min_output_cosine=0.95, min_output_snr_db=20.0)
    return report


def test_scores_near_one_half_warn_around_their_mean():
    report = _judge(_scores(False), _scores(True))
    assert report.calibration_outputs["y"] > 0.99  # the plain cosine passes: the warning's reason
    (found,) = [w for w in report.warnings if w.code == "NPF_QUANT_PROBABILITY_ERROR"]
    assert "output y" in found.message and "around its mean 0.5" in found.message and "keep_float" in found.hint
    (whole,) = report.probabilities["y"]
    assert whole.centred < 0.95 and whole.max_error < 0.1  # judged around the mean; the largest error is small


def _columns(coarse: bool) -> onnx.ModelProto:
    """``Sigmoid(0.2 * x) * [1, 100]``: a score column beside one in pixels (YOLOv7's objectness beside its box)."""
    model = _scores(coarse, "k", 2)
    model.graph.node[-1].output[0] = "p"
    model.graph.initializer.append(helper.make_tensor("cols", TensorProto.FLOAT, [2], [1.0, 100.0]))
    model.graph.node.append(helper.make_node("Mul", ["p", "cols"], ["y"]))
    return model


def test_a_probability_column_beside_pixels_is_judged_alone():
    report = _judge(_columns(False), _columns(True), width=2)
    assert report.calibration_outputs["y"] > 0.99
    (found,) = [w for w in report.warnings if w.code == "NPF_QUANT_PROBABILITY_ERROR"]
    assert "channel 0 of axis 2" in found.message and "channel 1" not in found.message
    assert [p.channel for p in report.probabilities["y"]] == [0]  # the whole output and the pixels are none


def test_spread_probabilities_moved_little_stay_quiet():
    # a map that spreads over [0, 1] (scale 4) and a small error: no warning (PP-OCR det's kind)
    report = _judge(_scores(False, "sharp"), _model([helper.make_node("Mul", ["x", "sharp"], ["l0"]),
                                                     helper.make_node("Add", ["l0", "k"], ["l"]),
                                                     helper.make_node("Sigmoid", ["l"], ["y"])], 1))
    assert report.probabilities["y"][0].max_error < 0.1
    assert not [w for w in report.warnings if w.code == "NPF_QUANT_PROBABILITY_ERROR"]


def test_values_outside_the_unit_interval_are_no_probability():
    nodes = [helper.make_node("Mul", ["x", "sharp"], ["y"])]
    report = _judge(_model(nodes, 1), _model([helper.make_node("Mul", ["x", "step"], ["y"])], 1))
    assert "y" not in report.probabilities


def test_a_map_of_mostly_zeros_is_judged_by_its_plain_cosine():
    # PP-OCRv4 det's kind: mean 0.06, spread 0.23; an edge pixel flipping is no offset the cosine hides
    shift = [helper.make_node("Sub", ["x", "step"], ["s"]), helper.make_node("Mul", ["s", "sharp"], ["l"]),
             helper.make_node("Sigmoid", ["l"], ["y"])]
    moved = [helper.make_node("Sub", ["x", "step"], ["s0"]), helper.make_node("Add", ["s0", "k"], ["s"]), *shift[1:]]
    report = _judge(_model(shift, 1), _model(moved, 1))
    (whole,) = report.probabilities["y"]
    assert whole.mean < whole.spread and whole.max_error > 0.1 and report.calibration_outputs["y"] > 0.95
    assert not [w for w in report.warnings if w.code == "NPF_QUANT_PROBABILITY_ERROR"]
