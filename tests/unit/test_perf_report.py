"""The perf report: JSON holds the numbers, the HTML page renders them in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

import npuflow
from npuflow.placement import NodePlacement
from npuflow.perf import estimate, write_report

from .test_perf_estimate import B4096, all_npu, conv_net

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (apt-get install -y chromium; .ci/run installs it)"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = conv_net([(32, 3, 2, 1), (32, 3, 1, -1), (64, 1, 1, 1), (64, 3, 1, -1), (128, 1, 1, 1)], 64)
    place = all_npu(model)
    place["conv2"] = NodePlacement("CPU", "cpu_conv2")
    report = estimate(model, npuflow.load_target(B4096), place, model_name="mixed")
    out = tmp_path_factory.mktemp("perf")
    return report, write_report(report, out)


def test_json_holds_the_same_numbers(written):
    report, folder = written
    assert folder.name == "mixed" and folder.parent.name == "perf_result"
    data = json.loads((folder / "mixed.json").read_text())
    assert data["latency_ms"] == pytest.approx(report.latency_ms)
    assert data["fps_all_cores"] == pytest.approx(report.fps_all_cores)
    assert data["loaded_bytes_per_frame"] == report.loaded_bytes_per_frame
    assert {s["device"] for s in data["subgraphs"]} == {"NPU", "CPU"}
    assert [layer["name"] for layer in data["layers"]] == [layer.name for layer in report.layers]
    assert "host CPU" in data["sources"]["CPU"]


def test_structure_picture_npu_dark_cpu_grey(written):
    _, folder = written
    gv = (folder / "mixed.gv").read_text()
    assert re.search(r'npu_subgraph_0 \[[^\]]*fillcolor="#263238"', gv)
    assert re.search(r'conv2 \[[^\]]*fillcolor="#d0d0d0"', gv)
    assert "<svg" in (folder / "mixed.html").read_text()  # dot is installed: the picture is embedded


def test_page_renders_in_headless_chromium(written, tmp_path):
    report, folder = written
    page = (folder / "mixed.html").resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert f'id="latency-ms">{report.latency_ms:.3f}<' in html
    assert f'id="fps-all">{report.fps_all_cores:.2f}<' in html
    assert f'id="loaded-bytes">{report.loaded_bytes_per_frame}<' in html
    # the script ran: the layer table opens sorted by cycles, most expensive first
    body = html[html.index('id="layers"'):]
    first = re.search(r"<tbody>\s*<tr[^>]*><td[^>]*>([^<]+)<", body).group(1)
    assert first == max(report.layers, key=lambda layer: layer.cycles).name
    shot = tmp_path / "perf_report.png"
    res = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", page)
    assert res.returncode == 0 and shot.stat().st_size > 10_000


def test_picture_near_the_top_scaled_to_fit(written):
    html = (written[1] / "mixed.html").read_text()
    assert html.index('id="structure"') < html.index("<h2>Details</h2>") < html.index("<h2>Layer Details</h2>")
    assert "#structure svg { display: block; max-width: 100%; height: auto;" in html
    assert '<details id="structure-table">' in html  # closed: the picture is there


def test_page_without_graphviz_shows_the_structure_as_a_table(written, tmp_path, monkeypatch):
    report, _ = written
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot
    folder = write_report(report, tmp_path)
    html = (folder / "mixed.html").read_text()
    assert "<svg" not in html and "apt-get install graphviz" in html
    assert '<details id="structure-table" open>' in html
    table = html[html.index('id="structure-table"'):html.index("<h2>Details</h2>")]
    for s in report.subgraphs:
        assert (s.name if s.device == "NPU" else s.nodes[0]) in table
    assert "conv2" in table and "npu_subgraph_0" in table


def test_report_is_one_set_and_a_stale_picture_goes(written, tmp_path, monkeypatch):
    """Rewriting a report without Graphviz removes the earlier svg (it would describe another
    run); a write that fails midway leaves the earlier report whole and no staging folder."""
    from npuflow.perf import report as report_module

    report, _ = written
    folder = write_report(report, tmp_path)
    assert (folder / "mixed.svg").is_file()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_write = report_module.write_atomic

    def failing(path, data):
        if str(path).endswith(".html"):
            raise OSError("disk full")
        return real_write(path, data)

    monkeypatch.setattr(report_module, "write_atomic", failing)
    with pytest.raises(OSError):
        write_report(report, tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.setattr(report_module, "write_atomic", real_write)

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    write_report(report, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["mixed.gv", "mixed.html", "mixed.json", "mixed.subgraph_0.html",
                                                        "mixed.subgraph_1.html"]


def test_report_name_that_cannot_be_a_file_is_a_coded_error(written, tmp_path):
    import copy

    report = copy.copy(written[0])
    report.model_name = ".."
    with pytest.raises(npuflow.NpuflowError) as err:
        write_report(report, tmp_path)
    assert err.value.code == "NPF_IO_WRITE_FAILED" and "'..'" in str(err.value)
