"""AdaQuant on a layer with no bias at all reports the written layer's error (issue 18).

PP-OCRv4 det's FPN convs (``p2o.Conv.37`` .. ``.58``, eight of its 62 weight layers) and YOLOv8n's
DFL conv have no bias input.  Before, AdaQuant learned a bias offset for them anyway, the error that
chose the kept result (and the one reported) counted that offset, and ``write_bias`` had nowhere to
put it: the written layer was not the one scored.  Now such a layer learns its weights only.

The layer is det's ``p2o.Conv.37`` (1x1, 360 -> 96 channels at 1/32 scale), cut out of the optimised
float model and fed its real inputs on four 640x640 calibration pages; 20x20 positions per page, so
the layer problem holds every output position and its error is the written layer's whole error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.graph import slice_model
from npuflow.model import infer_static_shapes, load
from npuflow.passes.optimize import optimize_float
from npuflow.quant.algorithms.capture import capture
from npuflow.targets import load_target
from tests import fixture_models
from tests.models.layer_error import record_layer_results, written_error

REPO = Path(__file__).resolve().parents[2]
DPU = "DPUCZDX8G_ISA1_B4096"
LAYER = "p2o.Conv.37"
CONFIG = {"fast_finetune": {"method": "adaquant", "iters": 100}, "include_bias_corr": False}


@pytest.fixture(scope="module")
def det_conv() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """``(det's bias-less conv p2o.Conv.37 alone, its float inputs on 4 calibration pages)``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import datasets

    pages = datasets.ocr_pages("calib", 4)
    det = infer_static_shapes(optimize_float(load(fixture_models.ppocr_det(), {"x": list(pages[0]["x"].shape)}),
                                             load_target(DPU)))
    (conv,) = [n for n in det.graph.node if n.name == LAYER]
    assert conv.op_type == "Conv" and len(conv.input) == 2, "det's FPN conv is no longer bias-less"
    got: list[np.ndarray] = []
    capture(det, pages, [conv.input[0]], lambda _, v: got.append(v[conv.input[0]]))
    return slice_model(det, [conv.output[0]], [conv.input[0]]), [{conv.input[0]: x} for x in got]


def _conv_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy of quantized ``model`` that also outputs the Conv's float result (before its
    QuantizeLinear), and that tensor's name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    (conv,) = [n for n in out.graph.node if n.op_type == "Conv"]
    assert len(conv.input) == 2  # still no bias: nothing was added to the graph
    out.graph.output.append(onnx.helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT, None))
    return out, conv.output[0]


def test_adaquant_without_a_bias_reports_the_written_layers_error(det_conv, monkeypatch, tmp_path):
    sub, feeds = det_conv
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    results = record_layer_results(monkeypatch)
    q = npuflow.quantize(sub, feeds, DPU, CONFIG, warn=False)
    (result,) = results
    assert result.name == LAYER and result.error_after < result.error_before

    quantized, name = _conv_output(q.model)
    written = written_error(quantized, name, sub, feeds)
    # before: reported 0.017411 for a written 0.017532 (the learned offset counted, then dropped);
    # now both 0.017447 (float32 sums in ORT's Conv and numpy's matmul differ by ~1e-7 relative)
    assert np.isclose(written, result.error_after, rtol=1e-4), (written, result.error_after, result.error_before)
