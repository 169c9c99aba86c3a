"""ONNX Runtime ``quantize_static`` QDQ models compiled for cpu-int8 equal ONNX Runtime (issue 16).

Users bring ORT-quantized models and run them with ORT's defaults, which fuse every uint8 QDQ
group into an integer QLinear kernel.  Measured before the fix: YOLOv8n (per channel) differed
from ORT's default run at 8 of 284 integer tensors by up to 212 steps (the dfl head) and PP-OCRv4
rec (per channel) at 337 of 346; now every integer tensor, and the model output, is equal.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
from tests import fixture_models
from tests.unit.test_runtime_exactness import _ort_default, ort_default_codes

REPO = Path(__file__).resolve().parents[2]
SHAPES = {"yolo": [1, 3, 320, 320], "rec": [1, 3, 48, 320]}


def _calibration(kind: str) -> list[dict[str, np.ndarray]]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import datasets

    if kind == "yolo":
        return datasets.yolo("calib", 4)
    return datasets.ocr_lines("calib", 4)[0]


def _ort_quantized(kind: str, per_channel: bool) -> Path:
    """ORT's recommended flow: ``quant_pre_process``, then ``quantize_static`` (QDQ, MinMax, uint8
    activations, int8 weights), written once into the model cache."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = fixture_models.CACHE / "foreign_exactness" / f"{kind}_{'pc' if per_channel else 'pt'}_u8.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    source = fixture_models.yolov8n() if kind == "yolo" else fixture_models.ppocr_rec()
    pre = out.with_name(f"{kind}_pre.onnx")
    if not pre.exists():
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    samples = iter(_calibration(kind))

    class Reader:
        def get_next(self):
            return next(samples, None)

    tmp = out.with_name(out.stem + f".tmp{os.getpid()}.onnx")
    quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    os.replace(tmp, out)
    return out


@pytest.mark.parametrize("kind,per_channel", [("yolo", True), ("rec", True), ("rec", False)])
def test_ort_quantized_model_equals_onnxruntime_default_at_every_integer_tensor(kind, per_channel, tmp_path):
    raw = onnx.load(str(_ort_quantized(kind, per_channel)))
    name = raw.graph.input[0].name
    model = npuflow.load(raw, input_shapes={name: SHAPES[kind]})
    feeds = {name: _calibration(kind)[0][name]}
    compiled = npuflow.compile(model, "cpu-int8")
    out = npuflow.Session(compiled).run(feeds, dump_dir=tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    quantized = {o for n in model.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    names = [t for t in index if t in quantized]  # accelerator tensors and CPU subgraph outputs
    assert len(names) > 200
    ref = ort_default_codes(model, feeds, names)
    wrong = {t: int(np.abs(np.load(tmp_path / index[t]).astype(np.int64) - ref[t].astype(np.int64)).max())
             for t in names}
    assert not {t: d for t, d in wrong.items() if d}, "integer tensors differing from ORT's default run"
    plain = _ort_default(model, feeds)
    for k, v in out.items():
        assert np.array_equal(v, plain[k]), k
