"""The per-frame fast paths of ``Session.run``: same outputs as the general path, same coded errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import npuflow
from npuflow.runtime import Session, fused, fused_run
from npuflow.runtime.executors import IntegerExecutor, OnnxExecutor
from tests.qdq_builder import ort_values
from tests.unit.test_compiler_kernels import _conv_model, _x
from tests.unit.test_runtime_session import DPU, _mixed_model, assert_refused


@pytest.fixture(scope="module")
def mixed():
    model = _mixed_model()
    return model, npuflow.compile(model, DPU)


@pytest.fixture(scope="module")
def whole():
    """conv -> relu on the DPU: one integer program that fuses whole (one ONNX Runtime run a frame)."""
    model = _conv_model("half_up", act="relu")
    return model, npuflow.compile(model, DPU)


def test_direct_run_is_the_compiled_session_and_leaves_wrappers_alone(whole):
    (run,) = _fused_runs(Session(whole[1]))
    assert fused.direct_run(run.session) == run.session._sess.run

    class Wrapped:  # as ort_session._Guarded: its own run must run (it checks custom ops after each)
        def __init__(self, s):
            self._sess = s

        def run(self, *args):
            return self._sess.run(*args)

    wrapped = Wrapped(run.session)
    assert fused.direct_run(wrapped) == wrapped.run


def _fused_runs(sess: Session):
    for step in sess._programs[0].steps:
        if isinstance(step.executor, IntegerExecutor):
            yield from (item for item in step.executor.plan.items if isinstance(item, fused.FusedRun))


def test_a_program_of_one_fused_run_returns_its_outputs_as_the_general_path_does(whole):
    model, compiled = whole
    sess = Session(compiled)
    (step,) = sess._programs[0].steps
    executor = step.executor
    assert isinstance(executor.single, fused.FusedRun)
    for k in range(3):
        x = {"x": _x([1, 8, 13, 11], k)}
        fast = executor.run(dict(x))
        single, executor.single = executor.single, None  # the general path: arena, environment, items
        try:
            general = executor.run(dict(x))
        finally:
            executor.single = single
        assert list(fast) == list(general) == executor.outputs
        assert all(np.array_equal(fast[o], general[o]) for o in fast)
        assert np.array_equal(sess.run(x)["y"], ort_values(model, x, ["y"])["y"])


def test_a_program_with_kernels_keeps_the_general_path(mixed):
    _, compiled = mixed
    ref = Session(compiled, fuse=False)
    for step in ref._programs[0].steps:
        if isinstance(step.executor, IntegerExecutor):
            assert step.executor.single is None


def test_fast_frames_equal_listened_and_kernel_frames(mixed):
    # no listener and no dump: the executors are called directly; with a listener the frame goes
    # through _run_step; fuse=False runs every op as its kernel: the same bytes all three ways
    model, compiled = mixed
    # the CPU subgraph on threads of its own stays a step apart (runtime/joined.py joins the three otherwise)
    fast, ref = Session(compiled, cpu_threads=2), Session(compiled, fuse=False)
    listened = Session(compiled, cpu_threads=2)
    events = []
    listened.add_listener(events.append)
    for k in range(4):
        x = {"x": _x([1, 4, 6, 6], k)}
        got = fast.run(x)
        assert list(got) == ["y"]
        assert np.array_equal(got["y"], listened.run(x)["y"])
        assert np.array_equal(got["y"], ref.run(x)["y"])
        assert np.array_equal(got["y"], ort_values(model, x, ["y"])["y"])
        assert fast.run(x, output_names=["y"]).keys() == {"y"}
    assert len(events) == 4 * len(listened._programs[0].steps)
    cpu = [s.executor for s in fast._programs[0].steps if isinstance(s.executor, OnnxExecutor)]
    assert cpu and all(e.lookup is not None or e._run == e.session._sess.run for e in cpu)


def test_bad_input_still_gets_the_coded_error_on_the_fast_path(whole):
    _, compiled = whole
    sess = Session(compiled)
    x = _x([1, 8, 13, 11])
    cases = [
        ({"nope": x}, "NPF_RUNTIME_UNKNOWN_INPUT"),
        ({}, "NPF_RUNTIME_MISSING_INPUT"),
        ({"x": x.astype(np.float64)}, "NPF_RUNTIME_INPUT_DTYPE"),
        ({"x": x.tolist()}, "NPF_RUNTIME_INPUT_DTYPE"),
        ({"x": x[..., :10]}, "NPF_RUNTIME_INPUT_SHAPE"),
    ]
    assert_refused(sess, cases)


def test_a_replaced_session_is_the_one_that_runs(whole):
    # FusedRun keeps the session's direct run beside the session it came from; a session put in
    # its place (a wrapper, a rebuilt session) is the one the next frame calls
    _, compiled = whole
    sess = Session(compiled)
    (run,) = _fused_runs(sess)
    x = {"x": _x([1, 8, 13, 11], 5)}
    want = sess.run(x)["y"]
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def run(self, *args):
            calls.append(args[2] if len(args) > 2 else None)
            return self.inner.run(*args)

    run.session = Counting(run.session)
    assert np.array_equal(sess.run(x)["y"], want)
    assert calls == [fused_run.RUN_OPTIONS]  # the run options built once, not ONNX Runtime's per-call defaults
    assert isinstance(run.session.inner, ort.InferenceSession)


def _general_only(monkeypatch, sess: Session) -> list:
    """Count the frames that reach the general path (``Session._validate``)."""
    seen = []
    validate = sess._validate
    monkeypatch.setattr(sess, "_validate", lambda inputs: seen.append(1) or validate(inputs))
    return seen


def test_a_one_run_model_runs_its_frame_as_one_compiled_run(whole, monkeypatch):
    # a frame of a model that is one fused run skips the step loop, the executor and the fused
    # run's dictionaries: the compiled session is called on the caller's arrays, and the outputs
    # are the general path's (a listener forces it), the kernels' and ORT's on the quantized model
    model, compiled = whole
    sess, ref = Session(compiled), Session(compiled, fuse=False)
    listened = Session(compiled)
    listened.add_listener(lambda event: None)
    assert sess._one_run is not None and ref._one_run is None and listened._one_run is not None
    frames = [{"x": _x([1, 8, 13, 11], k)} for k in range(3)]
    wants = [(listened.run(x)["y"], ref.run(x)["y"], ort_values(model, x, ["y"])["y"]) for x in frames]
    general = _general_only(monkeypatch, sess)
    monkeypatch.setattr(IntegerExecutor, "run", lambda *a, **k: pytest.fail("the executor ran on the short path"))
    fed = []
    run_fed = fused.FusedRun.run_fed
    monkeypatch.setattr(fused.FusedRun, "run_fed", lambda self, feeds: fed.append(feeds) or run_fed(self, feeds))
    for x, want in zip(frames, wants):
        got = sess.run(x)
        assert list(got) == ["y"] and fed[-1]["in0"] is x["x"]  # the caller's array, not a copy
        assert all(np.array_equal(got["y"], w) for w in want)
    assert general == [] and len(fed) == 3


def test_inputs_the_one_run_does_not_accept_take_the_general_path(whole, monkeypatch):
    # a read-only mapping and output_names go the general path, with the same outputs; a wrong
    # shape, dtype (a byte-swapped float32 too), name or a list still get their coded errors; a
    # closed session is refused, not run on its released sessions
    from types import MappingProxyType

    _, compiled = whole
    sess = Session(compiled)
    x = _x([1, 8, 13, 11], 7)
    want = sess.run({"x": x})["y"]
    general = _general_only(monkeypatch, sess)
    assert np.array_equal(sess.run(MappingProxyType({"x": x}))["y"], want)
    assert np.array_equal(sess.run({"x": x}, output_names="y")["y"], want)
    assert len(general) == 2
    swapped = x.astype(x.dtype.newbyteorder())  # the same values, another dtype: refused, not read as native
    assert np.array_equal(swapped, x) and swapped.dtype != x.dtype
    assert_refused(sess, [({"x": x[..., :10]}, "NPF_RUNTIME_INPUT_SHAPE"), ({"x": x[None]}, "NPF_RUNTIME_INPUT_SHAPE"),
                          ({"x": x.astype(np.float64)}, "NPF_RUNTIME_INPUT_DTYPE"),
                          ({"x": x.tolist()}, "NPF_RUNTIME_INPUT_DTYPE"), ({"x": swapped}, "NPF_RUNTIME_INPUT_DTYPE"),
                          ({"x": x, "z": x}, "NPF_RUNTIME_UNKNOWN_INPUT"),
                          ({"z": x}, "NPF_RUNTIME_UNKNOWN_INPUT"), ([x], "NPF_RUNTIME_BAD_FEED")])
    sess.close()
    assert_refused(sess, [({"x": x}, "NPF_RUNTIME_CLOSED")])


def test_strided_views_and_equal_dtypes_stay_on_the_one_run(whole, monkeypatch):
    # a non-contiguous view (every other column, reversed, Fortran order) is fed as it is: ONNX
    # Runtime reads it through a contiguous copy, the bytes of the general path and of ORT on the
    # quantized model; a dtype object equal to the compiled one but not numpy's own is accepted too
    model, compiled = whole
    sess, listened = Session(compiled), Session(compiled)
    listened.add_listener(lambda event: None)  # the general path: np.ascontiguousarray, the step loop
    x = _x([1, 8, 13, 11], 3)
    wide = np.zeros([1, 8, 13, 22], np.float32)
    wide[..., ::2] = x
    views = [wide[..., ::2], np.ascontiguousarray(x[..., ::-1])[..., ::-1], np.asfortranarray(x),
             x.view(np.dtype("float32", metadata={"from": "a loader"}))]
    general = _general_only(monkeypatch, sess)
    want = ort_values(model, {"x": x}, ["y"])["y"]
    for v in views[:3]:
        assert not v.flags.c_contiguous and np.array_equal(v, x)
    assert views[3].dtype == x.dtype and views[3].dtype is not x.dtype
    for v in views:
        got = sess.run({"x": v})["y"]
        assert np.array_equal(got, listened.run({"x": v})["y"]) and np.array_equal(got, want)
    assert general == []


def test_a_model_of_several_steps_has_no_one_run(mixed):
    _, compiled = mixed
    sess = Session(compiled, cpu_threads=2)  # not joined: runtime/joined.py joins only steps of one thread count
    assert len(sess._programs[0].steps) > 1 and sess._one_run is None


def test_a_float32_output_leaves_its_fused_run_without_a_cast(monkeypatch):
    # the fused graph holds every tensor as float32: a float32 output (a dequantized one) needs no
    # Cast to its own type, which ONNX Runtime would run as one more node per frame
    from tests.unit.test_compiler_kernels import CPU
    from tests.unit.test_runtime_quantize_steps import _classifier, _inputs

    opened = []
    real = fused_run.open_session
    monkeypatch.setattr(fused_run, "open_session", lambda model, **kw: opened.append(model) or real(model, **kw))
    compiled = npuflow.compile(_classifier("half_even", 1).model(), CPU)
    sess, ref = Session(compiled), Session(compiled, fuse=False)
    assert sess._one_run is not None and len(opened) == 1
    graph = opened[0].graph
    (out,) = graph.output
    assert out.type.tensor_type.elem_type == 1  # float32
    (last,) = [n for n in graph.node if out.name in n.output]
    assert last.op_type == "Identity", last.op_type
    for x in _inputs(1)["x"]:
        got, want = sess.run({"x": x}), ref.run({"x": x})
        assert all(got[k].dtype == want[k].dtype == np.float32 and np.array_equal(got[k], want[k]) for k in want)
