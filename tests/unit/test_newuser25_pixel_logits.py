"""New-user round 25: per-pixel logits ``N x C x H x W`` are read along their class axis, 1.

PixelCNN's output ``logits`` holds 8 intensity levels per pixel (a 1x1 Conv, channels first).  The
label check took every output named ``logits`` as rows along its *last* axis, the image width, and
warned ``NPF_QUANT_LABEL_MARGIN`` that 16-30 % of labels would change (on the three targets): the
argmax over 32 columns of a row, which nothing reads.  A Conv head's ``N x C x ...`` logits are
judged along ``C`` (``N*H*W`` rows of ``C`` classes); ``(N, C)`` and ``(N, T, C)`` ones along the last."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from tests.unit.quant_nets import samples


def _per_pixel_classifier(classes: int = 3) -> onnx.ModelProto:
    """x [1, 4, 8, 6] -> Conv 3x3 -> Relu -> Conv 1x1 (classes) -> logits [1, classes, 8, 6]."""
    rng = np.random.default_rng(25)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (classes, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "pixels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, 8, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_per_pixel_logits_are_judged_along_the_class_axis():
    calib = [{"x": s} for s in samples([1, 4, 8, 6], n=8)]
    report = npuflow.quantize(_per_pixel_classifier(), calib, "cpu-int8", warn=False).report
    (check,) = report.label_checks
    assert check.tensor == "logits"
    assert check.margin.rows == report.similarity_samples * 8 * 6  # one row of 3 classes per pixel, not 1 x 3 x 8 of 6


def test_two_class_pixel_logits_are_rows_of_two():
    calib = [{"x": s} for s in samples([1, 4, 8, 6], n=8)]
    report = npuflow.quantize(_per_pixel_classifier(classes=2), calib, "cpu-int8", warn=False).report
    assert [c.margin.rows for c in report.label_checks] == [report.similarity_samples * 8 * 6]
