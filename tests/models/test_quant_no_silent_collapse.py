"""PP-OCRv4 det never quantizes silently into a collapsed model (issue 16).

On DPUCZDX8G_ISA1_B4096 its re-parameterised PPLCNetV3 backbone loses the text maps (FP32 finds
text on 11 bundled photos at 640x640, the quantized model on 1; mean probability-map cosine on
them 0.12, and 0.94 with the backbone kept in float).  `npuflow quantize` used to exit 0 with "cosine 0.000000" and no
warning; the report's two samples held no text, so even that figure said nothing.  Now the
output similarity is pooled over the calibration samples and a value below min_output_cosine
warns, naming the nodes where it drops, or fails with --strict / in `npuflow build`.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import npuflow
from npuflow.analyze.sensitivity import analyze
from npuflow.errors import NpuflowError

DPU = "DPUCZDX8G_ISA1_B4096"
SIZE = 320
#: bundled photos: the first five have text PP-OCRv4 det finds in FP32 at 320x320
PHOTOS = ("coffee", "page", "clock", "cell", "text", "astronaut", "rocket", "camera")


def _det_input(image: np.ndarray, size: int) -> np.ndarray:
    """RapidOCR's det preprocessing: BGR, ``(x / 255 - 0.5) / 0.5``, NCHW float32."""
    import cv2

    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, 2::-1]), (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None])


@pytest.fixture(scope="module")
def calib():
    import skimage.data as sd

    return [_det_input(getattr(sd, name)(), SIZE) for name in PHOTOS]


@pytest.fixture(scope="module")
def det_dpu(models, calib):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("npuflow")
    logger.addHandler(handler)
    try:
        q = npuflow.quantize(str(models.ppocr_det()), calib, DPU, input_shapes={"x": [1, 3, SIZE, SIZE]})
    finally:
        logger.removeHandler(handler)
    return q, records


def test_det_reaches_the_threshold_or_warns_naming_nodes(det_dpu):
    q, records = det_dpu
    (cosine,) = q.report.calibration_outputs.values()
    assert q.report.similarity_samples == len(PHOTOS)
    assert 0.05 < cosine < 1.0  # pooled over the photos with text: not the all-background 0.000
    if cosine >= 0.95:
        assert q.problem is None
        return
    assert q.problem is not None and q.problem.code == "NPF_QUANT_LOW_SIMILARITY"
    warned = [r.getMessage() for r in records if "NPF_QUANT_LOW_SIMILARITY" in r.getMessage()]
    assert len(warned) == 1 and "largest drops at p2o." in warned[0] and "hint:" in warned[0]
    with pytest.raises(NpuflowError) as exc:  # what --strict and npuflow build do
        q.require_similarity()
    assert exc.value.code == "NPF_QUANT_LOW_SIMILARITY"


def test_det_strict_fails_with_a_broken_setting(models, calib):
    """Whatever the defaults reach, clipping every activation at its 1st percentile must fail."""
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(str(models.ppocr_det()), calib[:2], "cpu-int8", input_shapes={"x": [1, 3, SIZE, SIZE]},
                         config={"activation": {"method": "percentile", "percentile": 1.0}, "report_samples": 0,
                                 "include_bias_corr": False}, strict=True)
    assert exc.value.code == "NPF_QUANT_LOW_SIMILARITY"


def test_det_calibration_at_another_size_is_refused(models, calib):
    big = [_det_input(np.zeros((64, 64, 3), np.uint8), 2 * SIZE)]
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(str(models.ppocr_det()), calib[:1] + big, DPU, input_shapes={"x": [1, 3, SIZE, SIZE]})
    assert exc.value.code == "NPF_QUANT_CALIB_MISMATCH" and "1x3x640x640" in exc.value.message


def test_det_sensitivity_floats_the_conv_transpose(det_dpu, calib):
    """The float variant of a ConvTranspose used to give its weight and bias one initializer
    name: ONNX Runtime refused the model (shape {24,24,2,2} != {24} on the first one)."""
    q, _ = det_dpu
    rep = analyze(q, [{"x": calib[0]}], layers=["p2o.ConvTranspose.2"], quant_only=False)
    assert rep.ranking() == ["p2o.ConvTranspose.2"] and 0.0 <= rep.layers[0].float_only <= 1.0 + 1e-9
