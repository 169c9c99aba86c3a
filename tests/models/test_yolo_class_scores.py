"""YOLOv8n's class scores on cpu-int8: the head's Sigmoid, read only by the float Concat before the
output, stays float (``check/followers.py``), in ``check`` as in ``compile``.

Quantized onto its fixed [0, 1] grid (1/255), the Sigmoid rounded the small class scores to 0:
class-row cosine to FP32 on these crops 0.758 (one crop 0, every score rounded away); float 0.935, and 0.943
with the swish inputs no longer widened past their calibrated range (``quant/assign.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import benchmarks.datasets as D
import npuflow
from tests.qdq_builder import ort_values

pytestmark = pytest.mark.models

SIGMOID = "/model.22/Sigmoid"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm else 0.0


def test_class_scores_keep_their_small_values(models):
    path = models.yolov8n()
    shapes = {"images": [1, 3, 320, 320]}
    q = npuflow.quantize(str(path), D.yolo("calib", 8), target="cpu-int8", input_shapes=shapes)
    scores = next(n.output[0] for n in q.model.graph.node if n.name == SIGMOID)
    assert scores not in {n.input[0] for n in q.model.graph.node if n.op_type == "QuantizeLinear"}
    float_model = onnx.load(str(path))
    cos = []
    for feeds in D.yolo("eval", 8):
        got = ort_values(q.model, feeds, ["output0"], "all")["output0"]
        want = ort_values(float_model, feeds, ["output0"], "all")["output0"]
        cos.append(_cosine(got[:, 4:], want[:, 4:]))
    assert np.mean(cos) > 0.9 and min(cos) > 0.6, cos  # 0.758 and 0 with the Sigmoid quantized

    compiled = npuflow.compile(q.model, "cpu-int8")
    on_cpu = {n for sg in compiled.manifest["subgraphs"] if sg.get("engine") == "onnx" for n in sg.get("nodes", [])}
    assert SIGMOID in on_cpu
    assert npuflow.check(str(path), "cpu-int8", input_shapes=shapes).node(SIGMOID).device == "CPU"
