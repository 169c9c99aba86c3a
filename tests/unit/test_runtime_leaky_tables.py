"""openWakeWord's leaky-ReLU-with-a-floor byte tables (``LeakyRelu(0.2) -> Max(-0.4)`` after each
``QLinearConv``) run as ONNX Runtime's own table kernel ``com.microsoft.QLinearLeakyRelu`` and a
uint8 ``Clip`` at the floor's code, where a probe proves that form gives every code its table
entry (``fused_tables.float_form``, issue 19); the outputs stay byte-equal to the kernels of
``numerics`` (``fuse=False``) and to ONNX Runtime on the quantizer's QDQ model.  A table with
rounding ties (the output scale twice the input's: the table's half-up against the kernel's
half-to-even) stays a table."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.runtime import fused_run, fused_tables
from tests import fixture_models
from tests.compile_check import assert_session_equals_qdq_and_op_by_op
from tests.corpus import registry

TARGET = "DPUCZDX8G_ISA1_B4096"
ENTRY = registry.BY_NAME["pypi/oww_embedding"]


def _table(sx: float, sy: float, alpha: float = 0.2, floor: float = -0.4) -> np.ndarray:
    """The DPU's table of ``Max(LeakyRelu(x, alpha), floor)`` from int8 to int8 (zero points 0,
    half-up rounding), as uint8 bytes (codes + 128), the form ``float_form`` reads."""
    x = np.arange(-128, 128, dtype=np.float32) * np.float32(sx)
    y = np.maximum(np.where(x < 0, x * np.float32(alpha), x), np.float32(floor))
    return (np.clip(np.floor(y / np.float32(sy) + np.float32(0.5)), -128, 127) + 128).astype(np.int64)


@pytest.mark.parametrize("sx, sy", [(0.0625, 0.0625), (0.0625, 0.03125), (0.5, 0.25), (0.25, 0.25), (0.03125, 0.03125)])
def test_every_code_of_a_leaky_floor_table_through_the_kernel(sx, sy):
    """openWakeWord's scale pairs: the slope fitted to the table, ONNX Runtime's kernel gives all
    256 codes their entries (in every run length's tail); one entry off, the probe refuses."""
    table = _table(sx, sy)
    form = fused_tables._leaky_fit(sx, 128, sy, 128, table)
    assert form is not None and form[0] == "QLinearLeakyRelu" and form[2] == table.min(), form
    check = fused_tables._float_form_matches.__wrapped__  # the probe itself, not a cached verdict
    assert check(sx, 128, sy, 128, table.tobytes(), form)
    off = table.copy()
    off[100] += 1
    assert not check(sx, 128, sy, 128, off.tobytes(), form)


def test_a_table_with_half_up_ties_keeps_its_lookup():
    """Output scale twice the input's: odd positive codes land on half a code, where the table
    rounds up and ``QuantizeLinear``/``QLinearLeakyRelu`` to even: no form is offered."""
    assert fused_tables._leaky_fit(0.03125, 128, 0.0625, 128, _table(0.03125, 0.0625)) is None


@pytest.fixture(scope="module")
def oww():
    path = ENTRY.make(fixture_models.CACHE)
    calibration = registry.calibration_for(ENTRY, path, 8)
    quantized = npuflow.quantize(str(path), calibration, target=TARGET)
    return quantized, npuflow.compile(quantized.model, TARGET), calibration


def _fused_ops(session: npuflow.Session) -> list[str]:
    """The op types of every fused run's graph in ``session`` (before ONNX Runtime's optimisations)."""
    runs = [it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
            if isinstance(it, fused_run.FusedRun)]
    assert runs
    return [n.op_type for r in runs for n in r.graph().nodes]


def test_oww_leaky_tables_run_on_the_lookup_kernel_and_give_the_qdq_models_outputs(oww, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    quantized, compiled, calibration = oww
    session = npuflow.Session(compiled, threads=1)
    ops = _fused_ops(session)
    # the 14 tables after its convolutions: none a GatherElements copy any more
    assert "GatherElements" not in ops and ops.count("QLinearLeakyRelu") == 14 and ops.count("Clip") >= 14, ops
    assert_session_equals_qdq_and_op_by_op(session, quantized, compiled, calibration, 3, seed=3)
