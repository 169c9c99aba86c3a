"""Restarts of fast finetune chosen on held-out calibration samples (``fast_finetune: {restarts: N,
select_on: K}``, :mod:`npuflow.quant.algorithms.restarts`), on the trained MNIST CNN for the DPU with
real digits: every run is reported, the kept one is the best on the held-out samples and is the
model that seed builds without the held-out samples, and without ``restarts`` nothing changes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from npuflow.quant.algorithms.capture import run_outputs
from npuflow.quant.algorithms.restarts import agreement
from tests import fixture_models
from tests.unit.test_block_accept import _digits

DPU = "DPUCZDX8G_ISA1_B4096"
FT = {"method": "adaround", "iters": 30}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _same(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def _quantize(feeds, min_output_cosine=0.95, **ff):
    return npuflow.quantize(str(fixture_models.mnist_cnn()), feeds, target=DPU,
                            config={"include_bias_corr": False, "fast_finetune": {**FT, **ff},
                                    "min_output_cosine": min_output_cosine})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))


def test_the_kept_restart_is_the_best_on_the_held_out_samples(cache):
    feeds = _digits(40)
    q = _quantize(feeds, restarts=3, select_on=16)
    info = q.info["algorithms"]["fast_finetune"]
    runs = info["restarts"]
    assert [r["seed"] for r in runs] == [0, 1, 2]
    assert info["selected_on"] == 16 and info["samples"] == 24
    best = max(runs, key=lambda r: (r["score"], r["cosine"]))
    assert info["chosen_seed"] == best["seed"]
    assert all(r["seconds"] > 0 for r in runs)
    # the kept model is the one its seed builds from the first 24 digits alone: the last 16 took part
    # neither in calibration nor in the reconstruction (no accuracy check: it would hold out 6 of the 24)
    alone = {s: _quantize(feeds[:24], min_output_cosine=0.0, seed=s) for s in {0, 1, best["seed"]}}
    assert _same(q.model, alone[best["seed"]].model)
    assert not _same(alone[0].model, alone[1].model)  # the seeds differ: a choice is made
    # the recorded score is the kept model's on the held-out samples
    held = feeds[24:]
    score, cosine = agreement(run_outputs(q.dynamic_model, held), run_outputs(q.float_model, held))
    assert score == pytest.approx(best["score"], abs=1e-6) and cosine == pytest.approx(best["cosine"], abs=1e-6)


def test_one_run_without_select_on_is_unchanged(cache):
    feeds = _digits(16)
    plain = _quantize(feeds)
    one = _quantize(feeds, restarts=1)
    assert _same(plain.model, one.model)
    assert "restarts" not in one.info["algorithms"]["fast_finetune"]


def test_restarts_need_held_out_samples(cache):
    with pytest.raises(NpuflowError) as err:
        _quantize(_digits(8), restarts=2)
    assert err.value.code == "NPF_QUANT_BAD_CONFIG" and "select_on" in str(err.value)
    with pytest.raises(NpuflowError) as err:
        _quantize(_digits(8), restarts=2, select_on=8)
    assert err.value.code == "NPF_QUANT_BAD_CONFIG" and "select_on: 8" in str(err.value)
    with pytest.raises(NpuflowError) as err:  # held-out samples are read twice: a generator cannot give them
        _quantize(iter(_digits(12)), restarts=2, select_on=4)
    assert err.value.code == "NPF_QUANT_BAD_CONFIG" and "one-shot iterator" in str(err.value)


def test_agreement_reads_each_output_as_its_task():
    rng = np.random.default_rng(0)
    # a recogniser's (1, T, C) probabilities: whole greedy readings compared
    def line(classes):
        p = np.full((1, len(classes), 4), 0.1)
        p[0, np.arange(len(classes)), classes] = 0.7
        return [p]
    fp32 = [line([1, 1, 0, 2]), line([3, 0, 3, 0])]
    # a repeat merged differently reads the same line; a changed class does not
    quant = [line([1, 0, 0, 2]), line([3, 0, 2, 0])]
    assert agreement(fp32, fp32)[0] == 1.0
    assert agreement(quant, fp32)[0] == 0.5
    # (1, C) logits: argmax per sample
    logits = [[rng.normal(size=(1, 10))] for _ in range(4)]
    flipped = [[-v[0]] for v in logits]
    assert agreement(flipped, logits)[0] == 0.0
    # anything else: the output cosine
    maps = [[rng.normal(size=(1, 2, 3, 3))] for _ in range(3)]
    assert agreement(maps, maps) == pytest.approx((1.0, 1.0))



def test_a_detector_output_is_read_by_its_cosine_not_by_argmax_rows():
    """A detector's (1, 84, anchors) boxes and class scores: no task reads the anchor each channel row
    peaks at, so restarts score it by its output cosine, as the QAT guard does.  A candidate with every
    value close to FP32's but the peak anchor of each row moved scored 0 by argmax rows."""
    rng = np.random.default_rng(0)
    fp32 = [[rng.uniform(0.0, 1.0, size=(1, 84, 400)).astype(np.float32)] for _ in range(2)]
    moved = []
    for (out,) in fp32:
        got = out.copy()
        peak = out.argmax(-1)[0]
        got[0, np.arange(84), peak] = out.max() * 0.5  # each row's peak lowered below its runner-up
        moved.append([got])
    assert all((m[0].argmax(-1) != f[0].argmax(-1)).all() for m, f in zip(moved, fp32))
    score, cosine = agreement(moved, fp32)
    assert score == cosine and score > 0.99


def test_a_nan_candidate_scores_lowest():
    """An output cosine with a NaN is 0, not NaN (which compares false with every score, so a NaN
    first restart was never replaced)."""
    maps = [[np.ones((1, 2, 3, 3))]]
    broken = [[np.full((1, 2, 3, 3), np.nan)]]
    assert agreement(broken, maps) == (0.0, 0.0)


def test_each_model_runs_once_on_the_held_out_samples(cache, monkeypatch):
    """The float model's outputs on select_on's samples are the restarts' reference and the accuracy
    check's, and the kept restart is the model that check reads: each runs on them once (on PP-OCRv4
    rec a run of 512 lines took 1.5-3 minutes; the float and the kept run were made twice), and the
    check reads what it read when it ran them itself.  The float layer inputs the reconstructions
    fit are collected once for all restarts."""
    from npuflow.quant import report as report_module
    from npuflow.quant.algorithms import capture, fast_finetune, restarts

    feeds = _digits(40)
    runs: list[int] = []

    def counted(model, samples, **kw):
        samples = list(samples)
        # runs on select_on's samples (the last 16); the calibration figures beside the check read the first 16
        if len(samples) == 16 and np.array_equal(samples[0]["input"], feeds[24]["input"]):
            runs.append(id(model))
        return run_outputs(model, samples, **kw)

    for module in (capture, restarts, report_module):
        monkeypatch.setattr(module, "run_outputs", counted)
    collected: list[int] = []
    collect = fast_finetune._collect
    monkeypatch.setattr(fast_finetune, "_collect", lambda *a: collected.append(1) or collect(*a))
    q = _quantize(feeds, restarts=3, select_on=16)
    assert len(runs) == 4  # the float model, then each restart; the check ran none
    assert len(collected) == 1  # the float layer inputs, shared by the three reconstructions
    fresh = report_module.QuantReport()
    monkeypatch.setattr(report_module, "run_outputs", run_outputs)
    report_module.measure_outputs(fresh, q.float_model, q.dynamic_model, feeds[24:], held_out=True)
    assert q.report.similarity_samples == 16 and q.report.similarity_held_out
    assert q.report.calibration_outputs == pytest.approx(fresh.calibration_outputs, abs=1e-6)
