"""The runtime benchmark's batch-8 rows (``benchmarks.bench_runtime``): a model whose export fixed
batch 1 (MNIST's ``Reshape`` to ``[1, -1]`` before its classifier) is run at batch 8 as a copy whose
frames equal the original's, a model with an open batch is used as it is, and the table shows each
side's 2-thread over 1-thread throughput."""

from __future__ import annotations

import numpy as np
import onnx

from benchmarks import bench_runtime as B
from benchmarks import datasets as D
from tests import fixture_models


def test_fixed_batch_model_runs_at_batch_8_with_each_frame_as_before(tmp_path) -> None:
    original = fixture_models.mnist_cnn()
    x = np.concatenate([s["input"] for s in D.mnist("calib", 8)[0]])
    assert x.shape[0] == 8
    batched = B.batch_model(original, "input", 8, tmp_path)
    assert batched != original
    dims = onnx.load(str(batched)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [8, 1, 28, 28]
    stacked = D.ort_session(batched).run(None, {"input": x})[0]
    assert stacked.shape[0] == 8
    one = D.ort_session(original)
    for k in range(8):
        np.testing.assert_allclose(one.run(None, {"input": x[k:k + 1]})[0], stacked[k:k + 1], rtol=1e-5, atol=1e-5)
    B._check_batch_model(original, batched, {"input": x})  # the benchmark's own check passes


def test_open_batch_model_is_used_as_it_is(tmp_path) -> None:
    original = fixture_models.ppocr_cls()
    assert B.batch_model(original, "x", 8, tmp_path) == original
    assert B.batch_model(fixture_models.mnist_cnn(), "input", 1, tmp_path) == fixture_models.mnist_cnn()
    assert not list(tmp_path.iterdir())


def test_batch8_cases_cover_every_model_on_both_targets() -> None:
    cases = B.BATCH8.split(",")
    assert {c for c in cases if c.endswith(":B4096:8")} == {f"{m}:B4096:8" for m in B.BATCH8_MODELS}
    assert {c for c in cases if c.endswith(":cpu-int8:8")} == {f"{m}:cpu-int8:8" for m in B.BATCH8_MODELS}


def test_corpus_cases_cover_every_other_model_on_both_targets() -> None:
    """``--cases CORPUS``: each model outside the batch-8 six, on B4096 and cpu-int8 at batch 1."""
    keys = {c.split(":")[0] for c in B.CORPUS.split(",")}
    assert keys == (set(B.MODELS) | set(B.runtime_models.CORPUS_ENTRIES)) - set(B.BATCH8_MODELS)
    assert {c.split(":", 1)[1] for c in B.CORPUS.split(",")} == {"B4096:1", "cpu-int8:1"}


def test_table_shows_two_thread_scaling_of_npuflow_and_ort() -> None:
    row = {"model": "m", "target": "t", "batch": 8, "ms": {"npuflow 1 thread": 2.0, "npuflow 2 threads": 2.5},
           "fps": {"npuflow 1 thread": 500.0, "npuflow 2 threads": 400.0}, "outputs_equal_ort_qdq": True,
           "max_output_diff_vs_ort_qdq": 0.0, "ratio_vs_best_ort_plain_qdq": 1.0, "ratio_vs_best_ort_qdq": 1.0,
           "ratio_vs_best_ort_fp32": None, "speedup_vs_op_by_op": 4.0, "subgraphs": 1, "accelerator_subgraphs": 1,
           "two_thread_scaling": {"npuflow": {"clock": 0.8, "wall": 1.45},
                                  "ORT plain QDQ": {"clock": 0.6, "wall": 1.1}}}
    text = B.render([row], {"date": "d", "machine": "x", "cpus": 2, "load": "1", "rounds": 1, "runs": 1,
                            "command": "c", "clock": "process"})
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert "npuflow 2 / 1 threads" in header and "ORT plain QDQ 2 / 1 threads" in header
    line = next(line for line in text.splitlines() if line.startswith("| m | t | 8 |"))
    assert "| 0.80 / 1.45 | 0.60 / 1.10 |" in line
