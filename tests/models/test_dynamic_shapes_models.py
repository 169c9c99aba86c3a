"""Dynamic shapes end to end on PP-OCRv4 rec (input ``x: [?,3,?,?]``), as a RapidOCR user runs it.

* ``npuflow quantize`` on a folder of text-line samples of three widths, no ``--input-shape``: the
  saved ``quantized_model.onnx`` keeps the dynamic dims and plain ONNX Runtime runs it on a
  519-pixel line close to the float model;
* ``npuflow compile`` of that model at widths 160/320/640 into one ``.npuf``: each width runs the
  smallest program that fits and equals ONNX Runtime on the zero-padded line, bit for bit
  (power-of-two target).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import npuflow
from npuflow.quant.agreement import cosine as _cos
from npuflow.cli.app import main

pytestmark = pytest.mark.models

DPU = "DPUCZDX8G_ISA1_B4096"
WIDTHS = [160, 320, 640]



@pytest.fixture(scope="module")
def rec_quantized(models, tmp_path_factory):
    """PP-OCRv4 rec quantized for the DPU through the CLI from lines of widths 160, 240 and 320."""
    tmp = tmp_path_factory.mktemp("rec")
    calib = tmp / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i, width in enumerate([160, 240, 320, 160, 240, 320]):
        np.save(calib / f"{i:02d}.npy", rng.uniform(-1, 1, (1, 3, 48, width)).astype(np.float32))
    assert main(["quantize", str(models.ppocr_rec()), "-t", DPU, "--calib", str(calib), "-o", str(tmp / "q"),
                 "--no-nodes"]) == 0
    return tmp / "q" / "quantized_model.onnx"


def test_ppocr_rec_quantized_without_input_shape_runs_any_width(models, rec_quantized):
    dims = onnx.load(str(rec_quantized)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value if d.HasField("dim_value") else None for d in dims] == [None, 3, None, None]
    line = np.random.default_rng(1).uniform(-1, 1, (1, 3, 48, 519)).astype(np.float32)
    y = ort.InferenceSession(str(rec_quantized)).run(None, {"x": line})[0]
    ref = ort.InferenceSession(str(models.ppocr_rec())).run(None, {"x": line})[0]
    assert y.shape == ref.shape == (1, 65, 6625)
    assert _cos(y, ref) > 0.9


def test_ppocr_rec_multi_shape_npuf_equals_ort_on_the_padded_line(rec_quantized, tmp_path):
    argv = ["compile", str(rec_quantized), "-t", DPU, "-o", str(tmp_path / "rec.npuf")]
    for w in WIDTHS:
        argv += ["--input-shape", f"x=1x3x48x{w}"]
    assert main(argv) == 0
    sess = npuflow.Session(tmp_path / "rec.npuf", target=DPU)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(rec_quantized), opts)
    rng = np.random.default_rng(2)
    for width, padded_to in ((100, 160), (300, 320), (519, 640)):
        line = rng.uniform(-1, 1, (1, 3, 48, width)).astype(np.float32)
        out = sess.run({"x": line})
        (y,) = out.values()
        assert y.shape == (1, padded_to // 8, 6625)
        want = ref.run(None, {"x": np.pad(line, [(0, 0), (0, 0), (0, 0), (0, padded_to - width)])})[0]
        np.testing.assert_array_equal(y, want)
    with pytest.raises(npuflow.NpuflowError) as exc:
        sess.run({"x": np.zeros((1, 3, 48, 641), np.float32)})
    assert exc.value.code == "NPF_RUNTIME_SHAPE_TOO_LARGE" and "x=1x3x48x640" in exc.value.hint
