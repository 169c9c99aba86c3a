"""``npuflow perf`` / ``npuflow bench`` argument errors, through the CLI."""

from __future__ import annotations


def test_perf_rejects_unknown_file_kinds(cli, tmp_path):
    p = tmp_path / "model.txt"
    p.write_text("x")
    r = cli("perf", p, "--target", "DPUCZDX8G_ISA1_B4096")
    assert r.returncode == 2 and "NPF_PERF_UNSUPPORTED_FILE" in r.stderr


def test_perf_of_an_onnx_file_needs_a_target(cli, tmp_path):
    r = cli("perf", tmp_path / "model.onnx")
    assert r.returncode == 2 and "NPF_PERF_NO_TARGET" in r.stderr


def test_bench_checks_threads_and_frames(cli, tmp_path):
    r = cli("bench", tmp_path / "m.npuf", "--thread-num", "9")
    assert r.returncode == 2 and "NPF_PERF_BAD_THREADS" in r.stderr and "[1, 8]" in r.stderr
    r = cli("bench", tmp_path / "m.npuf", "--frame-count", "0")
    assert r.returncode == 2 and "NPF_PERF_BAD_FRAMES" in r.stderr
