"""``npuflow check`` on a model quantized by another tool warns when ``compile`` will refuse its
scales for the target (newuser round 4: ONNX Runtime's ``quantize_static`` digits classifier on
DPUCZDX8G_ISA1_B4096 was shown with 42 of 63 nodes on the DPU and no word that ``compile`` refuses
every one of its float scales with NPF_COMPILE_SCALES_UNSUPPORTED)."""

from __future__ import annotations

import numpy as np
import onnx

from tests.qdq_builder import Builder

rng = np.random.default_rng(0)


def _conv_qdq(scale: float) -> onnx.ModelProto:
    b = Builder(round_mode="half_even")
    x = b.dq(b.input("x", [1, 4, 6, 6], scale))
    w = b.weight("w", rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), scale / 4)
    b.output(b.quantize(b.node("Conv", [x, w], "conv", pads=[1, 1, 1, 1]), scale))
    return b.model()


def test_check_warns_when_compile_refuses_the_scales(tmp_path, cli):
    onnx.save(_conv_qdq(0.05), tmp_path / "q.onnx")
    r = cli("check", tmp_path / "q.onnx", "-t", "DPUCZDX8G_ISA1_B4096", "-o", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "WARNING [NPF_COMPILE_SCALES_UNSUPPORTED] npuflow compile will refuse this model" in r.stderr
    r = cli("check", tmp_path / "q.onnx", "-t", "cpu-int8", "-o", tmp_path / "c")
    assert r.returncode == 0 and "NPF_COMPILE_SCALES_UNSUPPORTED" not in r.stderr


def test_no_warning_for_power_of_two_scales(tmp_path, cli):
    onnx.save(_conv_qdq(0.0625), tmp_path / "q.onnx")
    r = cli("check", tmp_path / "q.onnx", "-t", "DPUCZDX8G_ISA1_B4096", "-o", tmp_path / "c")
    assert r.returncode == 0 and "NPF_COMPILE_SCALES_UNSUPPORTED" not in r.stderr, r.stderr
