"""The runtime benchmark's peak-memory probe (``benchmarks.runtime_memory.memory_columns``): a column's
figure is its child process's peak resident set over a baseline child's, transient allocations
included, and the benchmark process's own size never leaks into a child's figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import runtime_memory as B

# The probe reads VmHWM from /proc (Linux, as CI): elsewhere these tests fail rather than skip.


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_column_reports_its_load_and_transient_peak_over_the_baseline(tmp_path, monkeypatch) -> None:
    # the load keeps 50 MiB; each frame allocates 30 MiB more and frees it (an mmap'd block, given
    # back at once): the peak counts both, the RSS after the first frame only the 50
    monkeypatch.setitem(B.MEMORY_LOADS, "alloc", "buf = np.ones(50 << 20, np.uint8)\n"
                                                 "run = lambda: int(np.ones(30 << 20, np.uint8).sum())")
    input_path = tmp_path / "input.npz"
    np.savez(input_path, x=np.zeros((1, 3, 8, 8), np.float32))
    m = B.memory_columns({"alloc": ("alloc", tmp_path / "unused")}, input_path, frames=2, rounds=1)
    assert m["baseline"] > 20  # the interpreter and its imports
    # tolerance: two processes' import footprints differ by a MiB or two
    assert 75 <= m["alloc"]["peak"] < 100  # without the frame's 30 MiB it would be ~50
    assert 48 <= m["alloc"]["load"] < 60
    assert abs(m["alloc"]["first_frame"]) < 10
    # the kept buffer is anonymous memory, not a file's pages (the end's RSS may also keep a freed
    # frame's block: glibc raises its mmap threshold after the first one is given back)
    assert 48 <= m["alloc"]["anon"] <= m["alloc"]["peak"] + 5
    assert m["alloc"]["peak_abs"] == pytest.approx(m["baseline"] + m["alloc"]["peak"])


def test_a_column_is_its_median_round_over_that_rounds_baseline(tmp_path, monkeypatch) -> None:
    # one child's figure depends on the page cache (a child after its files were evicted read
    # 1.5-3.5 MiB more on PP-OCR cls): each column is the median of rounds of fresh children
    peaks = iter([100.0, 130.0, 50.0,  # round 1: baseline, "a", "b"
                  101.0, 120.0, 52.0,
                  99.0, 190.0, 48.0])

    def child(load, model=None, input_path=None, frames=5):
        return {"peak": next(peaks), "rss": {"input": 1.0, "loaded": 2.0, "first_frame": 3.0, "end": 3.0},
                "anon": {"input": 0.5, "loaded": 1.0, "first_frame": 2.5, "end": 2.5}}

    monkeypatch.setattr(B, "child_memory", child)
    m = B.memory_columns({"a": ("ORT", tmp_path), "b": ("ORT", tmp_path)}, tmp_path / "x.npz", frames=1)
    assert m["baseline"] == 100.0
    assert m["a"]["rounds"] == [30.0, 19.0, 91.0] and m["a"]["peak"] == 30.0 and m["a"]["peak_abs"] == 130.0
    assert m["b"]["rounds"] == [-50.0, -49.0, -51.0] and m["b"]["peak"] == -50.0 and m["b"]["base"] == 100.0
    assert m["a"]["load"] == 1.0 and m["a"]["first_frame"] == 1.0 and m["a"]["anon"] == 2.0


def test_child_peak_leaves_out_the_parent_it_was_forked_from() -> None:
    # ru_maxrss of a child counts the parent's resident pages (exec keeps the old address space's
    # high-water mark); VmHWM must not
    ballast = np.ones(400 << 20, np.uint8)
    parent = _rss_mib()
    child = B.child_memory(B.MEMORY_LOADS["baseline"])
    assert child["peak"] < parent - 300
    del ballast


def test_failing_child_raises_with_its_error() -> None:
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        B.child_memory("run = 1 // 0")
