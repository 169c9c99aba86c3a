"""YOLOv8n quantized for ``cpu-int8`` (npuflow.quantize, the benchmark's calibration images) and
compiled equals ONNX Runtime's default run of ``quantized_model.onnx`` (its int8 weights in the
form this CPU's integer kernels compute exactly, ``ort_kernels.exact_weights``): the outputs and
every integer tensor, bit for bit (issue 19).  ``exact_weights`` once moved the int8 anchors of
the box decoding to uint8 too, and ONNX Runtime then fused their add into a ``QLinearAdd`` the
model does not have: one box step on 5 of these 8 images."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

import benchmarks.datasets as D
import npuflow
from tests.compile_check import integer_tensors
from tests.qdq_builder import ort_values

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def yolo(models):
    q = npuflow.quantize(str(models.yolov8n()), D.yolo("calib", 8), target="cpu-int8",
                         input_shapes={"images": [1, 3, 320, 320]})
    return q.model, npuflow.compile(q.model, "cpu-int8")


def test_outputs_equal_onnxruntime_default(yolo):
    model, compiled = yolo
    sess = npuflow.Session(compiled)
    differing = {}
    for k, feeds in enumerate(D.yolo("eval", 8)):
        out = sess.run(feeds)
        ref = ort_values(model, feeds, list(out), "all")
        differing[k] = sum(int(np.sum(out[n] != ref[n])) for n in out)
    assert not any(differing.values()), differing


def test_every_integer_tensor_equals_onnxruntime_default(yolo):
    model, compiled = yolo
    feeds = D.yolo("eval", 8)[1]
    names = integer_tensors(compiled)
    with tempfile.TemporaryDirectory() as d:
        npuflow.Session(compiled).run(feeds, dump_dir=d)
        index = json.loads((Path(d) / "index.json").read_text())
        ref = ort_values(model, feeds, names, "all")
        bad = {n: int(np.abs(np.load(Path(d) / index[n]).astype(np.int64) - ref[n].astype(np.int64)).max())
               for n in names if not np.array_equal(np.load(Path(d) / index[n]), ref[n])}
    assert names and not bad, f"{len(bad)} of {len(names)} integer tensors differ: {list(bad.items())[:5]}"
