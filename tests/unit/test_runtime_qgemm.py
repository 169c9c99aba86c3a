"""Fully connected layers with one multiplier on ONNX Runtime's ``com.microsoft.QGemm``
(``runtime/fused_qgemm.matmul``): bit-exact with the kernels of ``numerics`` on the MNIST CNN,
taken only where this process' ``QGemm`` passes its check, and not taken for a multiplier per
output (MNIST on cpu-int8), whose ``QGemm`` form was measured slower than ``QLinearConv``."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow import ort_kernels
from npuflow.runtime import fused, fused_qgemm
from tests import fixture_models

B4096 = "DPUCZDX8G_ISA1_B4096"
SHAPE = [1, 1, 28, 28]


@pytest.fixture(scope="module")
def mnist() -> dict:
    """MNIST CNN compiled for cpu-int8 and B4096 from 4 random calibration frames, and those frames."""
    rng = np.random.default_rng(0)
    samples = [{"input": rng.uniform(0, 1, SHAPE).astype(np.float32)} for _ in range(4)]
    compiled = {t: npuflow.compile(npuflow.quantize(str(fixture_models.mnist_cnn()), samples, target=t,
                                                    input_shapes={"input": SHAPE}).model, t)
                for t in ("cpu-int8", B4096)}
    return {"samples": samples, **compiled}


def _fused_kinds(session: npuflow.Session) -> list[str]:
    return [n.op_type for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
            if isinstance(it, fused.FusedRun) for n in it.graph().nodes]


def _equal_to_unfused(compiled, samples) -> npuflow.Session:
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    for x in samples:
        a, b = fast.run(x), ref.run(x)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (k, int(np.sum(a[k] != b[k])))
    return fast


def test_one_shift_fully_connected_layers_run_on_qgemm_exactly(mnist):
    # B4096: each layer has one shift, so one multiplier: both layers are QGemm, the convs QLinearConv
    kinds = _fused_kinds(_equal_to_unfused(mnist[B4096], mnist["samples"]))
    assert kinds.count("QGemm") == 2 and kinds.count("QLinearConv") == 3, kinds


def test_a_multiplier_per_output_keeps_qlinearconv(mnist):
    # cpu-int8 quantizes the layers per channel: QGemm would want a zero point per column (slower)
    kinds = _fused_kinds(_equal_to_unfused(mnist["cpu-int8"], mnist["samples"]))
    assert "QGemm" not in kinds and kinds.count("QLinearConv") == 5, kinds


def test_layers_keep_qlinearconv_where_qgemm_fails_its_check(mnist, monkeypatch):
    monkeypatch.setattr(fused_qgemm, "qgemm_exact", lambda: False)
    kinds = _fused_kinds(_equal_to_unfused(mnist[B4096], mnist["samples"]))
    assert "QGemm" not in kinds and kinds.count("QLinearConv") == 5, kinds


@pytest.mark.parametrize("form", ["s8", "u8"])
def test_check_accepts_onnxruntimes_qgemm_in_either_weight_form(form, monkeypatch):
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: form)
    assert fused_qgemm.qgemm_exact.__wrapped__()


@pytest.mark.parametrize("code", [0, 200])  # a float-scale code, a power-of-two code
def test_check_refuses_a_qgemm_that_differs_on_one_code(code, monkeypatch):
    real = fused_qgemm._qgemm

    def one_off(*args):
        y = real(*args).copy()
        y[y == code] += 1
        return y

    monkeypatch.setattr(fused_qgemm, "_qgemm", one_off)
    assert not fused_qgemm.qgemm_exact.__wrapped__()
