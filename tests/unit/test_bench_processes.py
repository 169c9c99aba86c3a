"""The runtime benchmark's ``--processes N`` (``benchmarks.bench_runtime``): each case runs in N fresh
processes, every process's row is kept, and a row's ratios are the median over the processes with
their range; a bad N is refused by argparse, naming the value, without a traceback."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_runtime as B

SCRIPT = str(Path(B.__file__))


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=B.ROOT)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[dict, str]:
    """MNIST on cpu-int8, batch 1, in two fresh processes: the written JSON and table."""
    out = tmp_path_factory.mktemp("bench") / "runtime"
    proc = _bench("--cases", "mnist:cpu-int8:1", "--rounds", "1", "--runs", "1", "--calib", "2", "--no-memory",
                  "--clock", "process", "--processes", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


def test_each_process_keeps_its_row_and_the_row_is_their_median(two_processes) -> None:
    data, _ = two_processes
    assert data["meta"]["processes"] == 2
    (row,) = data["results"]
    runs = row["processes"]
    assert len(runs) == 2 and all(r["model"] == "MNIST CNN" and r["target"] == "cpu-int8" for r in runs)
    assert all("processes" not in r for r in runs)  # each a single process's row
    for key in ("ratio_vs_best_ort_plain_qdq", "ratio_vs_best_ort_fp32", "speedup_vs_op_by_op"):
        values = [r[key] for r in runs]
        assert row[key] == pytest.approx(statistics.median(values))
        assert row["spread"][key] == [min(values), max(values)]
    assert "ratio_vs_ort_exact_weight_plain_qdq" not in row["spread"]  # no such column on a VNNI CPU: None
    for column, ms in row["ms"].items():
        assert ms == pytest.approx(statistics.median(r["ms"][column] for r in runs))
        assert row["fps"][column] == pytest.approx(1000.0 / ms)


def test_table_shows_the_median_and_range_and_each_process(two_processes) -> None:
    data, text = two_processes
    row = data["results"][0]
    lo, hi = row["spread"]["ratio_vs_best_ort_plain_qdq"]
    assert f"{row['ratio_vs_best_ort_plain_qdq']:.2f}x ({lo:.2f}-{hi:.2f})" in text
    assert "each case in 2 fresh processes" in text
    each = ", ".join(f"{r['ratio_vs_best_ort_plain_qdq']:.2f}x" for r in row["processes"])
    assert f"| MNIST CNN | cpu-int8 | 1 | {each} |" in text


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_process_count_is_refused_naming_it(bad: str) -> None:
    proc = _bench("--cases", "mnist:cpu-int8:1", f"--processes={bad}")
    assert proc.returncode == 2
    assert f"argument --processes: {bad!r} is not a number of processes" in proc.stderr
    assert "Traceback" not in proc.stderr
