"""The runtime benchmark's columns: the exact-weight ORT column stays out of the plain QDQ "best"."""

from __future__ import annotations

from benchmarks import bench_runtime as B


def test_best_takes_only_the_thread_columns_of_its_prefix():
    med = {"npuflow 1 thread": 2.0, "npuflow 2 threads": 1.5, "npuflow op-by-op (before)": 0.1,
           "npuflow fused.py at abc 1 thread": 0.2, "ORT plain QDQ 1 thread": 3.0, "ORT plain QDQ 2 threads": 4.0,
           B.EXACT_PLAIN: 0.5, "ORT QDQ 1 thread": 6.0}
    assert B.best_of(med, "npuflow") == 1.5
    assert B.best_of(med, "ORT plain QDQ") == 3.0
    assert B.best_of(med, "ORT QDQ") == 6.0


def test_render_shows_the_exact_weight_ratio_and_na_without_it():
    row = {"model": "M", "target": "cpu-int8", "batch": 1, "ms": {"npuflow 1 thread": 1.0, B.EXACT_PLAIN: 1.2},
           "fps": {"npuflow 1 thread": 1000.0, B.EXACT_PLAIN: 833.3}, "outputs_equal_ort_qdq": True,
           "max_output_diff_vs_ort_qdq": 0.0, "ratio_vs_best_ort_plain_qdq": 0.8,
           "ratio_vs_ort_exact_weight_plain_qdq": 1.2, "ratio_vs_best_ort_qdq": 1.0, "ratio_vs_best_ort_fp32": None,
           "speedup_vs_op_by_op": 3.0, "subgraphs": 1, "accelerator_subgraphs": 1}
    old = dict(row, ms={"npuflow 1 thread": 1.0}, fps={"npuflow 1 thread": 1000.0})
    del old["ratio_vs_ort_exact_weight_plain_qdq"]  # a result file from before the column
    meta = {"date": "d", "machine": "x", "cpus": 2, "load": "1", "rounds": 1, "runs": 1, "command": "c"}
    text = B.render([row, old], meta)
    header = next(line for line in text.splitlines() if line.startswith("| model") and "exact-weight plain QDQ |" in line)
    assert "| npuflow / ORT exact-weight plain QDQ |" in header
    rows = [line for line in text.splitlines() if line.startswith("| M |")]
    assert "| 0.80x | 1.20x | 1.00x | n/a |" in rows[0]
    assert "| 0.80x | n/a | 1.00x | n/a |" in rows[1]
