"""benchmarks/bench_corpus_accuracy.py's metrics and counts (no model is run here)."""

from __future__ import annotations

import numpy as np

from benchmarks import bench_corpus_accuracy as bench
from tests.corpus.registry import BY_NAME


def test_top1_agreement_of_a_classifier_and_per_position_of_a_recogniser():
    f = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    q = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    assert bench.task_metric(BY_NAME["pypi/mnist_cnn"], "logits", q, f) == ("top1_agree", 0.75)
    rec = BY_NAME["pypi/ppocr_rec"]
    assert bench.task_metric(rec, "softmax", q[None], f[None]) == ("argmax_agree", 0.75)
    assert bench.task_metric(BY_NAME["pypi/ppocr_det"], "sigmoid_0.tmp_0", q, f) is None  # no obvious metric


def test_output_metrics_pool_the_samples():
    entry = BY_NAME["pypi/mnist_cnn"]
    ref = [[np.array([[1.0, 0.0]])], [np.array([[0.0, 2.0]])]]
    got = [[np.array([[1.0, 0.0]])], [np.array([[0.0, 1.0]])]]
    (row,) = bench.output_metrics(entry, ["logits"], got, ref)
    assert row["rel_l2"] == np.sqrt(1.0 / 5.0) and row["value"] == 1.0 and 0.94 < row["cosine"] < 0.95


def test_summary_counts_cells_below_each_band_with_and_without_a_warning():
    cells = [{"status": "ok", "warnings": ["NPF_QUANT_LOW_SIMILARITY"], "outputs": [{"cosine": 0.8}]},
             {"status": "ok", "warnings": [], "outputs": [{"cosine": 0.97}, {"cosine": 0.999}]},
             {"status": "refused", "warnings": []}]
    lines = bench.summary(cells)
    assert lines[0].startswith("3 cells, 2 measured, 1 coded refusals")
    assert "| 0.99 | 2 | 1 | 1 |" in lines and "| 0.95 | 1 | 1 | 0 |" in lines
