"""A Sigmoid that only the float tail reads stays float on float-scale targets (``check/followers.py``).

YOLOv8n's class scores leave the model through ``Sigmoid -> Concat -> output``; the Concat is the
float tail, yet the Sigmoid was quantized onto its fixed [0, 1] grid (1/255 on cpu-int8), which
rounds the small scores to 0: class-row cosine to FP32 0.82 -> 0.67 when the fixed range came in.
A Sigmoid read by a quantized op keeps its [0, 1] grid (the wake-word rule).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import npuflow
from tests import onnx_builders as B
from tests.unit.test_check_follows_quant_plan import FLOAT_SCALE, X, _feeds, _placed
from tests.unit.test_wakeword_models import _range


def _head(read_by_conv: bool = False) -> onnx.ModelProto:
    """YOLOv8's head in small: boxes from one Conv, scores ``Sigmoid(Conv)``, concatenated and
    reshaped to the output; ``read_by_conv``: a Conv reads the scores instead (a quantized reader)."""
    box, wb = B.conv_node("box", "x", "b", 4, 4)
    cls, wc = B.conv_node("cls", "x", "c", 4, 4)
    sig = helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid")
    if read_by_conv:
        after, wa = B.conv_node("after", "s", "y", 4, 4)
        return B.model([cls, sig, after], [B.vi("x", X)], [B.vi("y", None)], [wc, wa])
    tail = [helper.make_node("Concat", ["b", "s"], ["cat"], name="concat", axis=1),
            helper.make_node("Reshape", ["cat", "shape"], ["y"], name="reshape")]
    return B.model([box, cls, sig, *tail], [B.vi("x", X)], [B.vi("y", None)],
                   [wb, wc, B.const("shape", np.array([1, 8, 64]))])


def _quantized_outputs(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("target", FLOAT_SCALE)
def test_a_head_sigmoid_read_only_by_the_float_tail_stays_float(target):
    model = _head()
    placed = _placed(model, target)  # asserts compile runs every node check places on the accelerator there
    assert (placed["box"], placed["cls"], placed["sigmoid"], placed["concat"]) == ("NPU", "NPU", "CPU", "CPU")
    assert "float tail" in npuflow.check(model, target).node("sigmoid").reasons[-1]
    q = npuflow.quantize(model, [_feeds(model)], target=target, warn=False)
    assert "s" not in _quantized_outputs(q.model) and "c" in _quantized_outputs(q.model)
    manifest = npuflow.compile(q.model, target).manifest
    on_cpu = {n for sg in manifest["subgraphs"] if sg.get("engine") == "onnx" for n in sg.get("nodes", [])}
    assert "sigmoid" in on_cpu  # compile agrees with check: the Sigmoid runs in float
    assert npuflow.check(q.model, target).node("sigmoid").device == "CPU"


@pytest.mark.parametrize("target", FLOAT_SCALE)
def test_a_sigmoid_read_by_a_quantized_op_keeps_its_unit_grid(target):
    """The wake-word rule where the Sigmoid is no tail: its output grid spans [0, 1] whatever
    calibration saw (here outputs near 0.5 only)."""
    model = _head(read_by_conv=True)
    feeds = _feeds(model)
    calib = [{"x": (v * 0.01).astype(np.float32)} for v in feeds.values()]
    q = npuflow.quantize(model, calib, target=target, warn=False)
    assert "s" in _quantized_outputs(q.model)
    lo, hi = _range(q.quant_params["s"])
    assert lo <= 0.0 and abs(hi - 1.0) < 0.01, (lo, hi)
    assert _placed(model, target)["sigmoid"] == "NPU"
