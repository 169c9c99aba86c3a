"""Detection models with NonMaxSuppression in the graph (newuser round 6): the number of boxes the
quantized model keeps differs from the float model's on some samples, and its selected indices are
int64.  The accuracy check compared them as float tensors: a traceback (``operands could not be
broadcast together with shapes (12,) (9,)``) from ``npuflow quantize``, and an int64 output read
"cosine similarity 1.000000" when it was never compared.  Now such outputs are listed in
``QuantReport.unmeasured`` with the reason, the others are measured as before."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from npuflow.cli.similarity import calibration_note
from npuflow.quant.report import QuantReport, measure_outputs


def _nms_model(score_threshold: float):
    inits = [numpy_helper.from_array(np.array([8], np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
             numpy_helper.from_array(np.array([score_threshold], np.float32), "thr"),
             numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array(0, np.int64), "zero")]
    nodes = [helper.make_node("Sigmoid", ["logits"], ["scores"], "sig"),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["selected"], "nms"),
             helper.make_node("Gather", ["selected", "two"], ["idx"], "g_idx", axis=1),
             helper.make_node("Gather", ["boxes", "zero"], ["boxes0"], "g_b0", axis=0),
             helper.make_node("Gather", ["boxes0", "idx"], ["det_boxes"], "g_boxes", axis=0)]
    graph = helper.make_graph(
        nodes, "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4]),
                       helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 8]),
         helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3]),
         helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_data_dependent_and_integer_outputs_are_listed_not_measured():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 50, (1, 8, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + 10], axis=2)  # eight boxes, few overlapping
    logits = np.linspace(-2, 2, 8, dtype=np.float32).reshape(1, 1, 8)
    samples = [{"boxes": boxes, "logits": logits}]
    report = QuantReport()
    # the "quantized" model keeps more boxes (a lower threshold): another number of rows
    measure_outputs(report, _nms_model(0.6), _nms_model(0.3), samples)
    assert report.calibration_outputs == {"scores": 1.0}
    assert set(report.unmeasured) == {"selected", "det_boxes"}
    assert "int64" in report.unmeasured["selected"]
    assert "1 of 1 samples" in report.unmeasured["det_boxes"]
    assert "left out of the accuracy check" in calibration_note(report.to_json(), "det_boxes")
    assert report.to_json()["unmeasured"] == report.unmeasured


def test_integer_output_of_a_quantized_model_has_no_cosine():
    """A TopK's int64 positions: "cosine similarity 1.000000" before (nothing compared), now n/a
    with the reason beside it."""
    import npuflow

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array([3], np.int64), "k")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["flat"], "flat"),
             helper.make_node("TopK", ["flat", "k"], ["top", "pos"], "topk")]
    graph = helper.make_graph(nodes, "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("top", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 3])], [w, k, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = npuflow.quantize(model, [rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32) for _ in range(4)], "cpu-int8",
                         warn=False)
    assert q.report.outputs["pos"] is None and q.report.outputs["top"] is not None
    assert "pos" not in q.report.calibration_outputs and "int64" in q.report.unmeasured["pos"]


def test_relative_error_skips_integer_outputs_and_counts_another_box_count_as_a_miss():
    """The percentile search and bias correction's measure: it subtracted the outputs element by
    element, so a NonMaxSuppression keeping another number of boxes was a traceback from
    ``npuflow quantize`` with the default config (``operands could not be broadcast together with
    shapes (3,3) (4,3)``)."""
    from npuflow.quant.algorithms.apply import relative_error

    ref = [[np.ones((3, 4), np.float32), np.array([[0, 0, 1]], np.int64)]]
    same = [[np.ones((3, 4), np.float32), np.array([[0, 0, 2], [0, 0, 1]], np.int64)]]
    more_boxes = [[np.ones((4, 4), np.float32), np.array([[0, 0, 1]], np.int64)]]
    assert relative_error(same, ref) == 0.0  # the int64 indices are not compared
    assert relative_error(more_boxes, ref) == (16 + 12) / 12  # a complete miss, worse than any near answer

