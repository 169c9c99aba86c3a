"""``npuflow bench``, profiler.log, Chrome traces and the vaitrace-style summary on the real runtime."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import npuflow
from npuflow.profile import bench, format_result, profiler_log, trace
from tests.qdq_builder import Builder

B4096 = "DPUCZDX8G_ISA1_B4096"


def tiny_qdq():
    """conv+ReLU (NPU) -> Sigmoid (CPU on DPUCZDX8G) -> depthwise conv (NPU)."""
    rng = np.random.default_rng(0)
    b = Builder("half_up")
    x = b.input("x", [1, 8, 16, 16], 2.0 ** -5)
    w1 = b.weight("w1", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    c = b.node("Relu", [b.node("Conv", [b.dq(x), w1], "conv1", pads=[1, 1, 1, 1])], "relu1")
    s = b.node("Sigmoid", [b.dq(b.quantize(c, 2.0 ** -4))], "sig")
    w2 = b.weight("w2", rng.normal(0, 0.3, (16, 1, 3, 3)).astype(np.float32), 2.0 ** -7)
    d = b.node("Conv", [b.dq(b.quantize(s, 2.0 ** -7)), w2], "dw", pads=[1, 1, 1, 1], group=16)
    b.output(b.quantize(d, 2.0 ** -4), "y")
    return b.model()


@pytest.fixture(scope="module")
def npuf(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.npuf"
    npuflow.compile(tiny_qdq(), B4096).save(path)
    return path


@pytest.fixture(scope="module")
def names(npuf):
    return [s.name for s in npuflow.CompiledModel.load(npuf).subgraphs]


@pytest.fixture(scope="module")
def runs(npuf, names):
    """What the runtime runs, in order: the CPU subgraph (one sigmoid table) is spliced into one
    integer program with its two NPU neighbours, which listeners see as one run."""
    sess = npuflow.Session(npuf)
    steps = ["+".join(names[k] for k in step.indices) for step in sess._programs[0].steps]
    assert steps == ["+".join(names)]
    return steps


def _number(text: str, label: str) -> float:
    return float(re.search(re.escape(label) + r"\s*([0-9.]+)", text).group(1))


def test_bench_cli_prints_running_condition_and_perf_result(cli, npuf, runs, tmp_path):
    prof, tr = tmp_path / "prof", tmp_path / "trace.json"
    r = cli("bench", npuf, "--thread-num", "2", "--frame-count", "6", "--profile-path", prof, "--trace", tr)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    lines = [ln.rstrip() for ln in out.splitlines()]
    i = lines.index("Running condition:")
    assert lines[i + 1] == "  Thread number is: 2"
    assert lines[i + 2] == "  Frame count   is: 6"
    assert re.fullmatch(r"  Program run time: [0-9]+\.[0-9]{6}  ms", lines[i + 3])
    assert lines[i + 4] == "Perf result:"
    total = _number(out, "Frame totally latency is:")
    assert _number(out, "Average    latency    is:") == pytest.approx(total / 6, abs=1e-5)
    assert _number(out, "Frame      rate       is:") == pytest.approx(6 / (_number(out, "Program run time:") / 1e3),
                                                                     rel=1e-4)
    # vaitrace-style summary: estimated and measured columns told apart, one row per run of
    # subgraphs, the merged one with the estimate summed over its subgraphs
    assert "ESTIMATED for the target" in out and "MEASURED on this host" in out
    for name in runs:
        row = re.search(rf"\|\s*{re.escape(name)}\s*\|([^\n]*)", out)
        assert row and "-" not in row.group(1).split("|")[0], name

    log = json.loads((prof / "profiler.log").read_text())
    assert set(log["model_latency"]) == set(runs)
    for stats in [*log["model_latency"].values(), *log["task_latency"].values()]:
        assert stats["min_time"] <= stats["avg_time"] <= stats["max_time"]
    assert set(log["task_latency"]) == {"TaskRunningTime", "TaskScheduleTime", "TaskSubmitTime"}

    events = json.loads(tr.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == 6 * len(runs)
    assert {e["name"] for e in spans} == set(runs)
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    tids = {e["tid"] for e in spans}
    named = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert tids <= named and 1 <= len(tids) <= 2


def test_bench_api_from_threads(npuf, runs):
    sess = npuflow.Session(npuf)
    res = bench(sess, thread_num=3, frame_count=9)
    assert res.frame_count == 9 and len(res.frame_latencies_ms) == 9
    assert len(res.events) == 9 * len(runs)
    assert "Thread number is: 3" in format_result(res)
    assert set(profiler_log(res)["model_latency"]) == set(runs)


def test_trace_context_manager_records_runs_and_user_spans(npuf, runs, tmp_path):
    sess = npuflow.Session(npuf)
    feed = {"x": np.zeros((1, 8, 16, 16), np.float32)}
    path = tmp_path / "user_trace.json"
    with trace(path, sess) as t:
        with t.span("preprocess"):
            feed["x"] += 0.5
        sess.run(feed)
    spans = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in spans] == ["preprocess", *runs]
    assert {e["cat"] for e in spans} == {"CPU", "NPU"}
    sess.run(feed)  # the listener is removed when the block ends
    assert len(t.events) == 1 + len(runs)


def test_perf_reads_a_compiled_file(cli, npuf, names, tmp_path):
    r = cli("perf", npuf, "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "perf_result" / "tiny" / "tiny.json").read_text())
    assert [s["name"] for s in data["subgraphs"]] == names  # the runtime's subgraph names
    by = {s["name"]: s for s in data["subgraphs"]}
    assert by[names[1]]["device"] == "CPU" and "host CPU" in by[names[1]]["source"]
    engines = {layer["name"]: layer["engine"] for layer in data["layers"]}
    assert engines["conv1"] == "conv" and engines["dw"] == "depthwise"
    assert f"{data['latency_ms']:.3f}" in r.stdout


def test_perf_times_a_cpu_target_file_as_the_runtime_runs_it(cli, tmp_path):
    """On a CPU target the integer programs are no ONNX graph ONNX Runtime could run: ``perf``
    times the compiled model in the runtime (it reported 0 ms: "could not be timed alone")."""
    from tests.unit.quant_nets import conv_net, samples

    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8]), target="cpu-int8")
    path = tmp_path / "cnn.npuf"
    compiled = npuflow.compile(q.model, "cpu-int8")
    assert any(sg.on_accelerator for sg in compiled.subgraphs)
    compiled.save(path)
    r = cli("perf", path, "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "perf_result" / "cnn" / "cnn.json").read_text())
    assert data["latency_ms"] > 0 and data["cpu_ms"] == data["latency_ms"]
    assert not [n for n in data["notes"] if "could not be timed" in n], data["notes"]
    assert any("npuflow runtime" in n for n in data["notes"])
    assert "cannot time" not in r.stderr
