"""End-to-end figures: the target file's board CPU (``host:``) added to the model's estimate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import npuflow
from npuflow.placement import NodePlacement
from npuflow.perf import estimate, write_report

from .test_perf_estimate import B4096, all_npu, conv_net

DATA_DIR = Path(npuflow.targets.__file__).parent / "data"


def _board(folder: Path, host: str) -> Path:
    """A user target file based on the bundled B4096 with its own ``host:`` section."""
    for name in ("_dpuczdx8g.yaml", f"{B4096}.yaml"):
        (folder / name).write_text((DATA_DIR / name).read_text())
    path = folder / "board.yaml"
    path.write_text(f"base: {B4096}.yaml\nname: MYBOARD\nfingerprint: '0x5'\n{host}")
    return path


@pytest.fixture(scope="module")
def mixed_model():
    model = conv_net([(32, 3, 2, 1), (32, 3, 1, -1), (64, 1, 1, 1), (64, 3, 1, -1), (128, 1, 1, 1)], 64)
    place = all_npu(model)
    place["conv2"] = NodePlacement("CPU", "cpu_conv2")  # one CPU subgraph: its time is scaled to the board
    return model, place


def test_host_share_adds_to_the_model_estimate(mixed_model):
    model, place = mixed_model
    target = npuflow.load_target(B4096)
    host = target.host
    r = estimate(model, target, place, model_name="mixed")
    e = r.end_to_end
    assert e is not None and e.host == host.name and e.threads == host.threads == 4
    assert e.input_elements == 1 * 3 * 64 * 64
    assert e.output_elements == math.prod(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    assert e.preprocess_ms == pytest.approx(e.input_elements * host.preprocess_ns_per_element / 1e6)
    assert e.postprocess_ms == pytest.approx(e.output_elements * host.postprocess_ns_per_element / 1e6)
    assert e.frame_ms == pytest.approx(host.frame_us / 1e3)
    assert r.cpu_ms > 0 and e.cpu_subgraphs_ms == pytest.approx(r.cpu_ms * host.cpu_time_scale)
    assert e.latency_ms == pytest.approx(r.npu_ms + r.transfer_ms + e.cpu_subgraphs_ms + e.preprocess_ms
                                         + e.postprocess_ms + e.frame_ms)
    assert e.fps_single_thread == pytest.approx(1e3 / e.latency_ms)
    # threads overlap CPU and accelerator work: faster than one thread, never past either side's rate
    assert e.fps_single_thread < e.fps_multi_thread <= host.threads * 1e3 / e.host_ms + 1e-9
    assert r.to_dict()["end_to_end"]["latency_ms"] == pytest.approx(e.latency_ms)


def test_targets_without_a_board_cpu_have_no_end_to_end_figures(mixed_model):
    model, place = mixed_model
    assert npuflow.load_target("DPUCAHX8H_ISA2").host is None  # an Alveo card: the host is the user's server
    assert estimate(model, npuflow.load_target("DPUCAHX8H_ISA2"), place).end_to_end is None
    assert estimate(model, npuflow.load_target("cpu-int8"), place).end_to_end is None


def test_a_user_target_describes_its_own_board(tmp_path, mixed_model):
    model, place = mixed_model
    path = _board(tmp_path, "host: {name: one slow core, threads: 1, cpu_time_scale: 10, frame_us: 1000}\n")
    r = estimate(model, npuflow.load_target(path), place)
    e = r.end_to_end
    assert e.host == "one slow core" and e.frame_ms == 1.0
    assert e.preprocess_ms == pytest.approx(e.input_elements * 11 / 1e6)  # not overridden: the base's value
    assert e.bound == "host CPU" and e.fps_multi_thread == pytest.approx(e.fps_single_thread)


@pytest.mark.parametrize("bad", ["cpu_time_scale: -1", "threads: 0", "frame_us: .nan", "preprocess_ns_per_element: 1e400"])
def test_bad_host_values_are_coded_errors(tmp_path, bad):
    path = _board(tmp_path, f"host:\n  name: x\n  {bad}\n")
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.load_target(path)
    assert err.value.code == "NPF_TARGET_BAD_FILE" and "host." in str(err.value)


def test_report_has_a_detail_page_per_subgraph_and_drops_stale_ones(tmp_path, mixed_model):
    model, place = mixed_model
    r = estimate(model, npuflow.load_target(B4096), place, model_name="mixed")
    folder = write_report(r, tmp_path)
    main = (folder / "mixed.html").read_text()
    assert 'id="e2e-latency-ms"' in main and f"{r.end_to_end.latency_ms:.3f}" in main
    pages = sorted(folder.glob("mixed.subgraph_*.html"))
    assert len(pages) == len(r.subgraphs) >= 2
    for i, s in enumerate(r.subgraphs):
        page = (folder / f"mixed.subgraph_{i}.html").read_text()
        assert f'href="mixed.subgraph_{i}.html">{s.name}</a>' in main
        assert f"<h1>{s.name} ({s.device})</h1>" in page and f"{s.latency_ms:.4f}" in page
        for layer in r.layers:
            assert (f"<td class=\"l\">{layer.name}</td>" in page) == (layer.subgraph == s.name)
    one = estimate(model, npuflow.load_target(B4096), all_npu(model), model_name="mixed")
    write_report(one, tmp_path)
    assert [p.name for p in folder.glob("mixed.subgraph_*.html")] == ["mixed.subgraph_0.html"]
    assert 'id="e2e-latency-ms"' in (folder / "mixed.html").read_text()
