"""An add of ``QLinearAdd`` arithmetic that ONNX Runtime's kernel does not compute exactly (another
CPU's MLAS, a kernel check that failed) stays inside its fused run as ``numerics.qlinear_add``'s
own float operations (``fused_pairs.qlinear_add_float``), proven on every pair of codes at load,
instead of running as its numpy kernel between two fused runs (issue 19: PP-OCR cls on cpu-int8
then ran three ONNX Runtime calls and a numpy add per frame, where its frame is one call)."""

from __future__ import annotations

import pytest

import npuflow
from npuflow import numerics as nm
from npuflow.runtime import fused, fused_pairs, fused_qlinear
from tests.unit.test_compiler_kernels import CPU, _x
from tests.unit.test_runtime_fused import _equal_fused_and_kernels
from tests.unit.test_runtime_qlinear import _live_ops, _one_pair_off, _uint8_block
from tests.unit.test_runtime_small_runs import CLS, _build, _equal_to_kernels


@pytest.fixture
def refused_kernel(monkeypatch, tmp_path):
    """ONNX Runtime's ``QLinearAdd`` refused for every add (its check failed), no verdict from the
    disk cache."""
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    monkeypatch.setattr(fused_qlinear, "_qlinear_add_matches", lambda *params: False)
    check = fused_pairs._add_float_matches  # a test may replace it
    check.cache_clear()
    yield
    check.cache_clear()


@pytest.mark.parametrize("scale", [0.3, 2.0, 20.0])  # small codes, everyday ones, saturation
def test_an_add_the_kernel_check_refuses_stays_in_the_fused_run(refused_kernel, scale):
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, scale)}, CPU)
    assert not plan.reasons and [type(it) for it in plan.items] == [fused.FusedRun], plan.reasons
    ops = _live_ops(plan)
    assert "QLinearAdd" not in ops and ops.count("QLinearConv") == 3 and "Round" in ops, ops


def test_the_float_add_check_refuses_arithmetic_one_pair_off(monkeypatch, tmp_path):
    params = (0.05, 131, 0.04, 120, 0.07, 125)  # _uint8_block's add
    assert fused_pairs._add_float_matches.__wrapped__(*params)
    monkeypatch.setattr(nm, "qlinear_add", _one_pair_off(nm.qlinear_add))
    assert not fused_pairs._add_float_matches.__wrapped__(*params)


def test_an_add_neither_form_computes_runs_as_its_kernel(refused_kernel, monkeypatch):
    monkeypatch.setattr(fused_pairs, "_add_float_matches", lambda *params: False)
    plan = _equal_fused_and_kernels(_uint8_block().model(), {"x": _x([1, 8, 12, 12], 7, 2.0)}, CPU)
    assert list(plan.reasons.values()) == ["fused float chain or ONNX Runtime QLinearAdd"], plan.reasons


def test_pp_ocr_cls_frame_stays_one_call_where_its_add_kernel_is_refused(refused_kernel):
    cls = _build(CLS)
    session = npuflow.Session(cls["compiled"], threads=1)
    assert [type(step.executor).__name__ for step in session._programs[0].steps] == ["Joined"]
    _equal_to_kernels(session, cls["compiled"], cls["frames"][:2] + cls["frames"][4:])
