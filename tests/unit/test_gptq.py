"""GPTQ weight rounding (``fast_finetune: {method: gptq}``, :mod:`npuflow.quant.algorithms.gptq`, issue 18).

Each layer's weights are refitted to the quantized model's inputs by ridge regression and rounded
column by column on the layer's own grid (a DPU's power-of-two per-tensor scale), the columns not yet
rounded and the bias absorbing each column's error.  Checked on columns the solve did not see: the
layer's error and, through ``npuflow.quantize``, the model output's, both below nearest rounding;
the rounded model is still one DPU program, bit-exact with ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from npuflow import numerics
from npuflow.errors import NpuflowError
from npuflow.quant.algorithms.adaquant import adaquant
from npuflow.quant.algorithms.gptq import gptq
from npuflow.quant.algorithms.layer_problem import LayerProblem

from tests.unit.test_adaquant_lr import _net, _problem

TARGET = "DPUCZDX8G_ISA1_B4096"


def _halves(p: LayerProblem) -> tuple[LayerProblem, LayerProblem]:
    m = p.x.shape[2] // 2
    return (replace(p, x=p.x[:, :, :m], y=p.y[:, :, :m]), replace(p, x=p.x[:, :, m:], y=p.y[:, :, m:]))


def _depthwise(seed: int) -> LayerProblem:
    """96 channels of 3x3 depthwise taps on floored (power-of-two) inputs: one 10 x 10 problem each."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(96, 1, 9)) * 0.3).astype(np.float32)
    x = np.maximum(rng.normal(size=(96, 9, 1024)) + rng.normal(size=(96, 1, 1024)), 0).astype(np.float32)
    xq = (np.floor(x / 2.0 ** -3) * 2.0 ** -3).astype(np.float32)
    b = (rng.normal(size=(96, 1, 1)) * 0.1).astype(np.float32)
    s = np.full((96, 1, 1), numerics.pow2_scale(numerics.pow2_fix_pos(np.abs(w).max())), np.float32)
    return LayerProblem(w, s, b, xq, np.matmul(w, x) + b, -128, 127, "half_even")


@pytest.mark.parametrize("make", [lambda s: _problem(s, 2.0 ** -4), _depthwise], ids=["dense", "depthwise"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_lowers_the_held_out_layer_error_below_nearest_rounding(make, seed):
    fit, held_out = _halves(make(seed))
    codes, bias = gptq(fit)
    assert codes.dtype == np.float32 and np.array_equal(codes, np.round(codes))
    assert codes.min() >= fit.qmin and codes.max() <= fit.qmax
    nearest = held_out.error(fit.nearest_codes())
    assert held_out.error(codes, bias) < 0.8 * nearest    # measured 0.46-0.64 x nearest


def test_gptq_without_a_bias_keeps_it_zero_and_still_compensates():
    fit, held_out = _halves(replace(_problem(2, 2.0 ** -4), has_bias=False))
    fit, held_out = replace(fit, b=np.zeros_like(fit.b)), replace(held_out, b=np.zeros_like(held_out.b))
    codes, bias = gptq(fit)
    assert not bias.any()
    assert held_out.error(codes, bias) < held_out.error(fit.nearest_codes())


def test_adaquant_from_gptq_is_never_worse_than_its_start():
    p = _problem(0, 2.0 ** -4)
    start = gptq(p)
    codes, bias = adaquant(p, iters=100, start=start)
    assert p.error(codes, bias) <= p.error(*start)


def _output_error(qmodel, float_model, feeds) -> float:
    q, f = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (qmodel, float_model))
    return float(np.mean([np.mean((q.run(None, x)[0] - f.run(None, x)[0]) ** 2) for x in feeds]))


def test_gptq_lowers_the_model_output_error_and_compiles_bit_exact(tmp_path, monkeypatch):
    import npuflow
    from tests.compile_check import compare_with_ort

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)} for _ in range(24)]
    calib, held_out = feeds[:16], feeds[16:]
    model = _net()
    plain = npuflow.quantize(model, calib, target=TARGET, config={"include_bias_corr": False})
    q = npuflow.quantize(model, calib, target=TARGET,
                         config={"include_bias_corr": False, "finetune_samples": 16, "fast_finetune": {"method": "gptq"}})
    assert q.info["algorithms"]["fast_finetune"]["layers"] == 3
    assert _output_error(q.model, model, held_out) < _output_error(plain.model, model, held_out)  # 0.91 x
    compiled = npuflow.compile(q.model, TARGET)
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [True]
    diffs = compare_with_ort(q.model, held_out[0], TARGET)
    assert max(diffs.values()) == 0, diffs


@pytest.mark.parametrize("ff", [{"method": "adaround", "start": "gptq"}, {"method": "gptq", "learn_threshold": True},
                                {"method": "adaquant", "start": "gptq", "backend": "torch"}])
def test_gptq_settings_that_cannot_act_are_refused(ff, tmp_path, monkeypatch):
    import npuflow

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)} for _ in range(4)]
    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(_net(), feeds, target=TARGET, config={"include_bias_corr": False, "fast_finetune": ff})
    assert err.value.code == "NPF_QUANT_CONFIG_CONFLICT"


def test_auto_bias_correction_is_skipped_after_gptq_and_runs_after_adaround(tmp_path, monkeypatch):
    """GPTQ solves every bias against the quantized model's own inputs, so ``include_bias_corr:
    auto`` (the default) does not spend its correction and check runs after it; after AdaRound it
    still runs."""
    import npuflow
    from npuflow.quant.algorithms import apply

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    calls = []
    real = apply.correct_empirical
    monkeypatch.setattr(apply, "correct_empirical", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)} for _ in range(8)]
    q = npuflow.quantize(_net(), feeds, target=TARGET, config={"finetune_samples": 8, "fast_finetune": {"method": "gptq"}})
    assert calls == []
    assert q.info["algorithms"]["bias_correction"] == {"layers": 0, "kept": False, "skipped": "GPTQ refits every bias"}
    q = npuflow.quantize(_net(), feeds, target=TARGET,
                         config={"finetune_samples": 8, "fast_finetune": {"method": "adaround", "iters": 5}})
    assert calls == [1] and "skipped" not in q.info["algorithms"]["bias_correction"]


def test_columns_sets_how_many_patches_each_layer_problem_holds(tmp_path, monkeypatch):
    """``fast_finetune: {columns: N}`` is the number of input patches each layer's problem samples over
    the samples fast finetune reads (GPTQ's input covariance is estimated from them); the default
    stays 2,048.  Before the key existed the config refused it."""
    import npuflow
    from npuflow.quant.algorithms import fast_finetune

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    seen: list[int] = []
    monkeypatch.setattr(fast_finetune, "gptq", lambda p: seen.append(p.m) or gptq(p))
    rng = np.random.default_rng(9)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)} for _ in range(8)]
    config = {"include_bias_corr": False, "finetune_samples": 8}
    npuflow.quantize(_net(), feeds, target=TARGET, config={**config, "fast_finetune": {"method": "gptq", "columns": 64}})
    assert seen and max(seen) == 64          # 8 patches from each of the 8 samples
    seen.clear()
    npuflow.quantize(_net(), feeds, target=TARGET, config={**config, "fast_finetune": {"method": "gptq"}})
    assert seen and max(seen) > 64           # 2,048 asked for: every position of the small maps
