"""Chrome trace-event output and the vaitrace-style summary, from recorded run events."""

from __future__ import annotations

import json

import npuflow
from npuflow.placement import NodePlacement
from npuflow.perf import estimate
from npuflow.profile import BenchResult, chrome_trace, vaitrace_summary, write_chrome_trace
from npuflow.profile.events import RunEvent

from .test_perf_estimate import B4096, conv_net


def _events():
    ev = []
    for thread, base in ((111, 0), (222, 500_000)):
        t = 1_000_000 + base
        for name, dev, dur in (("npu_subgraph_0", "NPU", 300_000), ("cpu_conv2", "CPU", 100_000)):
            ev.append(RunEvent(name, dev, thread, t, t + dur, 0))
            t += dur + 10_000
    return ev


def test_chrome_trace_has_one_track_per_thread(tmp_path):
    path = write_chrome_trace(_events(), tmp_path / "t.json")
    data = json.loads(path.read_text())
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 4 and {e["tid"] for e in spans} == {1, 2}
    assert {e["args"]["name"] for e in data["traceEvents"] if e["name"] == "thread_name"} == {"thread 1", "thread 2"}
    first = min(spans, key=lambda e: e["ts"])
    assert first["ts"] == 0 and first["dur"] == 300.0 and first["cat"] == "NPU"  # microseconds
    assert chrome_trace([])["traceEvents"][0]["ph"] == "M"


def test_summary_keeps_estimated_and_measured_apart():
    model = conv_net([(32, 3, 2, 1), (32, 3, 1, -1), (64, 1, 1, 1)], 32)
    place = {"conv0": NodePlacement("NPU", "npu_subgraph_0"), "conv1": NodePlacement("NPU", "npu_subgraph_0"),
             "conv2": NodePlacement("CPU", "cpu_conv2")}
    est = estimate(model, npuflow.load_target(B4096), place, measure_cpu=False)
    res = BenchResult(thread_num=2, frame_count=2, run_time_ms=1.0, frame_latencies_ms=[0.4, 0.4], events=_events())
    text = vaitrace_summary(res, est)
    npu_row = next(line for line in text.splitlines() if "| npu_subgraph_0 |" in line)
    cells = [c.strip() for c in npu_row.strip("|").split("|")]
    sg = est.subgraphs[0]
    assert cells[0] == f"{B4096}:batch-1"
    assert cells[3] == f"{sg.ops / 1e9:.3f}" and cells[4] == f"{sg.latency_ms:.3f}"  # estimated
    assert cells[-2] == "2" and cells[-1] == "0.300"  # measured: 2 runs of 0.3 ms
    assert "ESTIMATED for the target" in text and "MEASURED on this host" in text
    assert any("| cpu_conv2 |" in line and "0.100" in line for line in text.splitlines())
