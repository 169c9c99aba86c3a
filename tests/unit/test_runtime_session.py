"""Session, runner API, threads, listeners, dumps, input validation, and the CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.errors import NpuflowError
from npuflow.runtime import Session
from tests.qdq_builder import Builder, ort_values
from tests.unit.test_compiler_kernels import _x

DPU = "DPUCZDX8G_ISA1_B4096"


def _mixed_model():
    """conv -> Softmax (no integer lowering: CPU) -> conv: three subgraphs, int8 boundaries."""
    rng = np.random.default_rng(0)
    b = Builder("half_up")
    x = b.input("x", [1, 4, 6, 6], 2.0 ** -4)
    c = b.node("Conv", [b.dq(x), b.weight("w1", rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), 2.0 ** -7)],
               "conv1", pads=[1, 1, 1, 1])
    y1 = b.quantize(b.node("Relu", [c], "relu1"), 2.0 ** -4)
    sm = b.node("Softmax", [b.dq(y1)], "softmax", axis=1)
    y2 = b.quantize(sm, 2.0 ** -7)
    c2 = b.node("Conv", [b.dq(y2), b.weight("w2", rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), 2.0 ** -7)],
                "conv2")
    b.output(b.quantize(c2, 2.0 ** -5), "y")
    return b.model()


@pytest.fixture(scope="module")
def mixed():
    model = _mixed_model()
    return model, npuflow.compile(model, DPU)


def test_unlowerable_op_goes_to_cpu_with_a_message(mixed):
    model, compiled = mixed
    devices = [s.device for s in compiled.subgraphs]
    assert devices == ["DPU", "CPU", "DPU"], devices
    assert any("softmax" in n and "CPU" in n for n in compiled.notes)
    x = {"x": _x([1, 4, 6, 6])}
    got = Session(compiled).run(x)["y"]
    ref = ort_values(model, x, ["y"])["y"]
    assert np.array_equal(got, ref)


def test_threads_share_one_session_and_match_single_thread(mixed):
    _, compiled = mixed
    sess = Session(compiled)
    xs = [{"x": _x([1, 4, 6, 6], k)} for k in range(8)]
    single = [sess.run(x)["y"] for x in xs]
    results = [None] * 24

    def work(k):
        results[k] = sess.run(xs[k % 8])["y"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, r in enumerate(results):
        assert np.array_equal(r, single[k % 8])


def test_listener_sees_one_event_per_subgraph(mixed):
    _, compiled = mixed
    sess = Session(compiled)
    events = []
    sess.add_listener(events.append)
    sess.run({"x": _x([1, 4, 6, 6])})
    assert [e.subgraph_id for e in events] == [0, 1, 2]
    assert all(e.end_ns >= e.start_ns and e.thread_id == threading.get_ident() for e in events)
    assert [e.device for e in events] == ["DPU", "CPU", "DPU"]
    sess.remove_listener(events.append)


def test_vart_style_runners(mixed):
    _, compiled = mixed
    sess = Session(compiled)
    x = {"x": _x([1, 4, 6, 6], 3)}
    full = sess.run(x)
    env = dict(x)
    for runner in sess.runners():
        ins = [np.ascontiguousarray(env[t.name]) for t in runner.get_input_tensors()]
        outs = [np.empty(t.shape, t.dtype) for t in runner.get_output_tensors()]
        job = runner.execute_async(ins, outs)
        assert runner.wait(job) == 0
        env.update({t.name: o for t, o in zip(runner.get_output_tensors(), outs)})
    assert np.array_equal(env["y"], full["y"])
    r0 = sess.runners()[0]
    with pytest.raises(NpuflowError) as err:
        r0.execute_async([np.zeros((1, 2), np.float32)], [])
    assert err.value.code == "NPF_RUNTIME_BAD_BUFFERS"
    with pytest.raises(NpuflowError) as err:
        r0.wait(12345)
    assert err.value.code == "NPF_RUNTIME_UNKNOWN_JOB"


def test_input_validation(mixed):
    _, compiled = mixed
    sess = Session(compiled)
    cases = [
        ({"nope": _x([1, 4, 6, 6])}, "NPF_RUNTIME_UNKNOWN_INPUT"),
        ({}, "NPF_RUNTIME_MISSING_INPUT"),
        ({"x": _x([1, 4, 6, 6]).astype(np.float64)}, "NPF_RUNTIME_INPUT_DTYPE"),
        ({"x": _x([1, 4, 6, 7])}, "NPF_RUNTIME_INPUT_SHAPE"),
    ]
    assert_refused(sess, cases)


def assert_refused(sess: Session, cases: list[tuple[dict, str]]) -> None:
    """Each ``(feeds, code)``: ``sess.run(feeds)`` raises that coded error."""
    for feeds, code in cases:
        with pytest.raises(NpuflowError) as err:
            sess.run(feeds)
        assert err.value.code == code


def test_per_frame_work_is_only_what_the_frame_needs(mixed):
    # integer programs run wholly as fused graphs place nothing in an arena, so a frame allocates
    # none (the kernels' run keeps its planned arena); a list or a non-contiguous view is checked
    # and fed as before, with the same outputs as the kernels
    _, compiled = mixed
    fast, ref = Session(compiled), Session(compiled, fuse=False)
    integer = [k for k, sg in enumerate(compiled.subgraphs) if sg.device == "DPU"]
    assert all(fast._programs[0].executor(k).arena_bytes == 0 for k in integer)
    assert all(ref._programs[0].executor(k).arena_bytes > 0 for k in integer)
    x = _x([1, 4, 6, 6], 9)
    view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous
    assert np.array_equal(fast.run({"x": view})["y"], ref.run({"x": x})["y"])
    with pytest.raises(NpuflowError) as err:
        fast.run({"x": x.tolist()})
    assert err.value.code == "NPF_RUNTIME_INPUT_DTYPE" and "list" in err.value.message


def test_a_model_whose_program_fuses_whole_is_one_onnx_runtime_run_per_frame():
    # conv -> relu on the DPU: one integer program, one fused graph, so each frame is one
    # ONNX Runtime run and nothing else (no kernels, no arena)
    from npuflow.runtime import fused
    from tests.unit.test_compiler_kernels import _conv_model

    sess = Session(npuflow.compile(_conv_model("half_up", act="relu"), DPU))
    (step,) = sess._programs[0].steps
    (run,) = step.executor.plan.items
    assert isinstance(run, fused.FusedRun) and step.executor.arena_bytes == 0
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def run(self, *args):
            calls.append(1)
            return self.inner.run(*args)

    run.session = Counting(run.session)
    for k in range(3):
        sess.run({"x": _x([1, 8, 13, 11], k)})
    assert len(calls) == 3


def test_target_fingerprint_is_checked(mixed):
    _, compiled = mixed
    Session(compiled, target=DPU)
    with pytest.raises(NpuflowError) as err:
        Session(compiled, target="cpu-int8")
    assert err.value.code == "NPF_RUNTIME_TARGET_MISMATCH"


def test_the_served_target_defaults_to_the_environment(mixed, monkeypatch):
    """Without ``target=`` the runtime serves $NPUFLOW_TARGET, as a board's runtime serves its DPU."""
    _, compiled = mixed
    monkeypatch.setenv("NPUFLOW_TARGET", "cpu-int8")
    with pytest.raises(NpuflowError) as err:
        Session(compiled)
    assert err.value.code == "NPF_RUNTIME_TARGET_MISMATCH" and "cpu-int8" in err.value.message
    monkeypatch.setenv("NPUFLOW_TARGET", DPU)
    Session(compiled)
    monkeypatch.delenv("NPUFLOW_TARGET")
    Session(compiled)  # no served target known: the file's own (schema-checked) target


def test_a_pinned_hash_refuses_other_bytes(mixed, tmp_path):
    import hashlib

    _, compiled = mixed
    path = tmp_path / "m.npuf"
    compiled.save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.zeros((1, 4, 6, 6), np.float32)
    out = Session(path, expected_sha256=digest.upper()).run({"x": x})
    np.testing.assert_array_equal(out["y"], Session(path).run({"x": x})["y"])
    for bad, shown in (("0" * 64, digest), ("not-a-hash", "64 hex digits")):
        with pytest.raises(NpuflowError) as err:
            Session(path, expected_sha256=bad)
        assert err.value.code == "NPF_RUNTIME_HASH_MISMATCH" and shown in err.value.message
    with pytest.raises(NpuflowError) as err:
        Session(tmp_path / "missing.npuf", expected_sha256=digest)
    assert err.value.code == "NPF_COMPILE_FILE_NOT_FOUND"


def test_dump_names_match_the_quantized_model(mixed, tmp_path):
    model, compiled = mixed
    x = {"x": _x([1, 4, 6, 6], 2)}
    Session(compiled).run(x, dump_dir=tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    ints = [n for n in index if n.endswith("_q")]
    assert {"x_q", "relu1_q", "softmax_q"} <= set(ints)
    ref = ort_values(model, x, ints)
    for n in ints:
        assert np.array_equal(np.load(tmp_path / index[n]), ref[n]), n


def test_not_quantized_model_is_refused():
    b = Builder("half_up")
    b.inputs.append(onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4]))
    b.float_output(b.node("Relu", ["x"], "r"))
    with pytest.raises(NpuflowError) as err:
        npuflow.compile(b.model(), DPU)
    assert err.value.code == "NPF_COMPILE_NOT_QUANTIZED"


def test_cli_compile_info_run(tmp_path, cli):
    onnx.save(_mixed_model(), tmp_path / "q.onnx")
    r = cli("compile", tmp_path / "q.onnx", "--target", DPU, "-o", tmp_path / "m.npuf")
    assert r.returncode == 0, r.stderr
    r = cli("info", tmp_path / "m.npuf", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [s["device"] for s in doc["subgraphs"]] == ["DPU", "CPU", "DPU"]
    assert doc["subgraphs"][0]["op_counts"]["conv2d"] == 1 and doc["memory"]["weight_bytes"] > 0
    r = cli("info", tmp_path / "m.npuf")
    assert r.returncode == 0 and "subgraph_1_cpu" in r.stdout and "peak activation" in r.stdout
    np.save(tmp_path / "x.npy", _x([1, 4, 6, 6], 1))
    r = cli("run", tmp_path / "m.npuf", "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "o",
            "--dump", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "o" / "y.npy")
    assert np.array_equal(got, Session(tmp_path / "m.npuf").run({"x": _x([1, 4, 6, 6], 1)})["y"])
    assert (tmp_path / "d" / "index.json").exists()
    r = cli("run", tmp_path / "m.npuf", "--input", "x=missing.npy")
    assert r.returncode == 2 and "NPF_RUNTIME_BAD_INPUT_FILE" in r.stderr
    # one input: a bare FILE.npy is that input's; two bare files are refused, naming the input
    r = cli("run", tmp_path / "m.npuf", "-i", tmp_path / "x.npy", "-o", tmp_path / "o2")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "o2" / "y.npy"), got)
    r = cli("run", tmp_path / "m.npuf", "-i", tmp_path / "x.npy", "-i", tmp_path / "x.npy")
    assert r.returncode == 2 and "NPF_RUNTIME_BAD_INPUT_FILE" in r.stderr and "one input (x)" in r.stderr
    r = cli("run", tmp_path / "m.npuf", "--input", f"x={tmp_path / 'x.npy'}", "--target", "cpu-int8")
    assert r.returncode == 2 and "NPF_RUNTIME_TARGET_MISMATCH" in r.stderr
    np.save(tmp_path / "bad.npy", _x([1, 4, 5, 6]))
    for args, code in [(("--input", f"x={tmp_path / 'bad.npy'}"), "NPF_RUNTIME_INPUT_SHAPE"),
                       (("--input", f"z={tmp_path / 'x.npy'}"), "NPF_RUNTIME_UNKNOWN_INPUT")]:
        r = cli("run", tmp_path / "m.npuf", *args)
        assert r.returncode == 2 and code in r.stderr
