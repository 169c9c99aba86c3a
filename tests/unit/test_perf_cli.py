"""``npuflow perf`` / ``npuflow bench`` argument errors, through the CLI."""

from __future__ import annotations

import json


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


def test_perf_of_a_float_onnx_model(cli, tmp_path):
    from onnx import save

    from .test_perf_estimate import conv_net

    path = tmp_path / "net.onnx"
    save(conv_net([(32, 3, 2, 1), (32, 3, 1, -1), (64, 1, 1, 1)], 32), path)
    r = cli("perf", path, "--target", "DPUCZDX8G_ISA1_B4096", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "perf_result" / "net"
    data = json.loads((folder / "net.json").read_text())
    assert "Model Performance Summary" in r.stdout and f"{data['latency_ms']:.3f}" in r.stdout
    assert data["target"] == "DPUCZDX8G_ISA1_B4096" and data["subgraphs"][0]["device"] == "NPU"
    assert (folder / "net.html").is_file() and (folder / "net.svg").is_file()


def test_perf_on_a_one_core_target_shows_one_frame_rate(cli, tmp_path):
    """cpu-int8 has one core: the summary printed "Model Frame Rate, 1 core" and "..., 1 cores"
    with the same figure; now the all-cores row is there only for several cores."""
    from onnx import save

    from .test_perf_estimate import conv_net

    path = tmp_path / "net.onnx"
    save(conv_net([(8, 3, 1, 1)], 16), path)
    r = cli("perf", path, "--target", "cpu-int8", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Model Frame Rate, 1 core (FPS)" in r.stdout and "1 cores" not in r.stdout
    r = cli("perf", path, "--target", "DPUCZDX8G_ISA1_B4096", "-o", tmp_path / "dpu")
    assert r.returncode == 0, r.stderr
    assert "Model Frame Rate, 1 core (FPS)" in r.stdout and " cores (FPS)" in r.stdout
