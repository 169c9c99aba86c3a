"""PP-OCR cls's hard-swish byte tables run as ONNX Runtime's float ``HardSwish`` on the
dequantized codes where a probe proves that form gives every code its table entry (but the one a
max pooling reads)
(``fused_tables.float_form``, issue 19): the outputs stay equal to the kernels of ``numerics``
(``fuse=False``) and to ONNX Runtime on the quantized model, on real cls frames and on both
targets; a table the probe refuses (another function, one entry off) stays a table."""

from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest

import npuflow
from benchmarks import datasets as D
from npuflow.runtime import fused_tables
from tests import fixture_models
from tests.unit.test_runtime_quantize_steps import _optimized

SHAPE = [1, 3, 48, 192]


def _frames(n: int, seed: int) -> list[dict]:
    return [{"x": np.ascontiguousarray(s["x"][..., :192])} for s in D.ocr_lines("calib", n, seed=seed)[0]]


@functools.cache
def _build(target: str) -> dict:
    quantized = npuflow.quantize(str(fixture_models.ppocr_cls()), _frames(8, 0), target=target,
                                 input_shapes={"x": SHAPE})
    return {"target": target, "model": quantized.model, "compiled": npuflow.compile(quantized.model, target)}


@pytest.fixture(scope="module", params=["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def cls(request) -> dict:
    return _build(request.param)


def _ops(session: npuflow.Session, tmp_path) -> list[str]:
    return [n.op_type for n in _optimized(session, tmp_path / "fused.onnx")]


def test_cls_hard_swish_runs_in_float_and_equals_kernels_and_onnxruntime(cls, tmp_path):
    session = npuflow.Session(cls["compiled"])
    ref = npuflow.Session(cls["compiled"], fuse=False)
    plain = ort.InferenceSession(cls["model"].SerializeToString(), providers=["CPUExecutionProvider"])
    frames = _frames(4, 1) + [{"x": np.full(SHAPE, v, np.float32)} for v in (-50.0, 50.0)]  # both ends saturate
    for x in frames:
        a, b = session.run(x), ref.run(x)
        c = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, x)))
        for k in a:
            assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]), (k, a[k], b[k], c[k])
    if cls["target"] == "cpu-int8":  # the DPU's hard-swish is a table of each convolution's accumulator instead
        ops = _ops(session, tmp_path)
        # 17 of the 18 hard-swish tables -> HardSwish (which ONNX Runtime expands to HardSigmoid and Mul);
        # the one a max pooling reads stays a table written channels-last (NhwcMaxPool on its bytes), and
        # so do the 9 SE blocks' hard-sigmoid tables
        assert ops.count("HardSigmoid") == 17 and ops.count("GatherElements") == 10, ops
        assert "NhwcMaxPool" in ops and "MaxPool" not in ops, ops


def test_a_table_the_probe_refuses_stays_a_table(tmp_path, monkeypatch):
    cls = _build("cpu-int8")
    monkeypatch.setattr(fused_tables, "_float_form_matches", lambda *args: False)
    session = npuflow.Session(cls["compiled"])
    x = _frames(1, 2)[0]
    assert np.array_equal(session.run(x)["save_infer_model/scale_0.tmp_1"],
                          npuflow.Session(cls["compiled"], fuse=False).run(x)["save_infer_model/scale_0.tmp_1"])
    ops = _ops(session, tmp_path)
    assert "HardSigmoid" not in ops and ops.count("GatherElements") == 27, ops


def test_probe_refuses_a_table_one_entry_off_and_accepts_the_true_one():
    sx, zx, sy, zy = 0.06605391949415207, 107, 0.03976715728640556, 9  # cls's first hard-swish
    x = (np.arange(256, dtype=np.float32) - np.float32(zx)) * np.float32(sx)
    table = np.clip(np.rint(x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1) / np.float32(sy)) + zy, 0, 255)
    table = table.astype(np.int64)
    check = fused_tables._float_form_matches.__wrapped__  # the probe itself, not a cached verdict
    assert check(sx, zx, sy, zy, table.tobytes())
    off = table.copy()
    off[200] += 1  # within the numpy screen's one code: only ONNX Runtime's run refuses it
    assert fused_tables._near(sx, zx, sy, zy, off)
    assert not check(sx, zx, sy, zy, off.tobytes())
