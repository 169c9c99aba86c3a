"""Issue 19, peak memory: a program's fused graphs stored on disk (``runtime/fused_cache.py``), so
that a later load opens their sessions without building them again (the build's numpy code pages
and allocator pools stayed in the loaded process: docs/runtime-measurements.md, "Peak memory").

A stored plan must give the sessions the build would: the same graphs, weights and session
settings, the same runs and kernels between them, the same outputs bit for bit."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import npuflow
from npuflow.runtime import broadcast, fused, fused_cache, fused_run, joined
from npuflow.runtime import session as session_module
from tests import fixture_models
from tests.compile_check import random_sample_npuf


@pytest.fixture(scope="module")
def cls_b4096(tmp_path_factory):
    return random_sample_npuf(fixture_models.ppocr_cls(), "DPUCZDX8G_ISA1_B4096", "x", [1, 3, 48, 192], 2,
                              tmp_path_factory.mktemp("cls") / "cls.npuf")


def _opened(monkeypatch) -> list[tuple[bytes, dict, dict]]:
    """Every fused run's and joined step's session as it is opened: serialized graph, external
    weights, settings."""
    opened: list[tuple[bytes, dict, dict]] = []
    real = fused_run.open_session

    def spy(model, **kwargs):
        external = {k: v.copy() for k, v in kwargs["external"].items()}
        opened.append((model.SerializeToString(), external, {k: v for k, v in kwargs.items() if k != "external"}))
        return real(model, **kwargs)

    monkeypatch.setattr(fused_run, "open_session", spy)
    monkeypatch.setattr(joined, "open_session", spy)
    return opened


def _plans(session: npuflow.Session) -> list[list]:
    return [[(("run", it.span.start, it.span.stop, it.inputs, it.outputs) if isinstance(it, fused.FusedRun) else it)
             for it in step.executor.plan.items] + [step.executor.plan.reasons]
            for p in session._programs for step in p.steps if hasattr(step.executor, "plan")]


def _no_build(*args, **kwargs):
    raise AssertionError("the plan was built, not read from the cache")


def _load_twice(monkeypatch, path) -> tuple[npuflow.Session, list, npuflow.Session, list]:
    real_open = fused_run.open_session
    built_opened = _opened(monkeypatch)
    built = npuflow.Session(path)
    monkeypatch.setattr(fused_run, "open_session", real_open)  # (not undo: the cache's settings stay)
    read_opened = _opened(monkeypatch)
    real_build = fused._build
    monkeypatch.setattr(fused, "_build", _no_build)
    read = npuflow.Session(path)
    monkeypatch.setattr(fused, "_build", real_build)
    return built, built_opened, read, read_opened


def _same_sessions(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for (graph_a, ext_a, opts_a), (graph_b, ext_b, opts_b) in zip(a, b):
        assert graph_a == graph_b and opts_a == opts_b
        assert ext_a.keys() == ext_b.keys()
        for name in ext_a:
            assert ext_a[name].dtype == ext_b[name].dtype and np.array_equal(ext_a[name], ext_b[name])


def test_a_second_load_opens_the_stored_graphs_and_computes_the_same_codes(monkeypatch, fused_cache_on, cls_b4096,
                                                                          tmp_path):
    path, samples = cls_b4096
    built, built_opened, read, read_opened = _load_twice(monkeypatch, path)
    assert len(list((fused_cache_on / "fused").glob("*.bin"))) == 1
    # the frame is one joined session (runtime/joined.py): the build opened its fused run's session
    # first, the stored plan's run is joined without opening one of its own (FusedRun.deferred)
    assert [type(step.executor) for p in read._programs for step in p.steps] == [joined.Joined]
    assert len(built_opened) == 2 and len(read_opened) == 1
    _same_sessions(built_opened[1:], read_opened)
    (run,) = read._programs[0].steps[0].executor.parts[0].executor.plan.items
    assert run.session is None
    model, external, _ = run.model()  # as stored; a session opens it with full-rank constants (e2eec20)
    opened = broadcast.full_rank_constants(model)
    _same_sessions(built_opened[:1], [(opened.SerializeToString(), external, built_opened[0][2])])
    assert _plans(read) == _plans(built)
    kernels = npuflow.Session(path, fuse=False)
    for x in samples:
        ref = kernels.run(x)
        for out in (built.run(x), read.run(x)):
            assert all(np.array_equal(out[k], ref[k]) for k in ref)
    # dump mode's session is written again from the run's ops: every integer tensor equal to the build's
    (built_dir, read_dir) = (tmp_path / "built", tmp_path / "read")
    built.run(samples[0], dump_dir=built_dir)
    read.run(samples[0], dump_dir=read_dir)
    names = sorted(p.name for p in built_dir.glob("*.npy"))
    assert len(names) > 50 and names == sorted(p.name for p in read_dir.glob("*.npy"))
    assert all(np.array_equal(np.load(built_dir / n), np.load(read_dir / n)) for n in names)


def test_kernels_between_runs_are_kept_in_the_stored_plan(monkeypatch, fused_cache_on, cls_b4096):
    path, samples = cls_b4096
    seen: list[str] = []
    real = fused._EMITTERS["conv"]

    def refuse_tenth(g, op, blobs):  # the tenth convolution runs as its kernel, cutting the program in two runs
        if op["name"] not in seen:
            seen.append(op["name"])
        if seen.index(op["name"]) == 9:
            raise fused.NotFusable("refused by the test")
        return real(g, op, blobs)

    monkeypatch.setitem(fused._EMITTERS, "conv", refuse_tenth)
    built = npuflow.Session(path)
    real_build = fused._build
    monkeypatch.setattr(fused, "_build", _no_build)
    read = npuflow.Session(path)
    monkeypatch.setattr(fused, "_build", real_build)
    (plan,) = _plans(read)
    assert sum(isinstance(it, int) for it in plan[:-1]) >= 1 and sum(isinstance(it, tuple) for it in plan[:-1]) == 2
    assert "refused by the test" in plan[-1].values()
    assert _plans(read) == _plans(built)
    ref = npuflow.Session(path, fuse=False).run(samples[1])
    out = read.run(samples[1])
    assert all(np.array_equal(out[k], ref[k]) for k in ref)


def test_a_damaged_file_is_built_again_and_replaced(monkeypatch, fused_cache_on, cls_b4096):
    path, samples = cls_b4096
    npuflow.Session(path)
    (stored,) = (fused_cache_on / "fused").glob("*.bin")
    data = bytearray(stored.read_bytes())
    data[100:4000] = bytes(3900)  # the first graph's bytes
    stored.write_bytes(bytes(data))
    built = []
    real_build = fused._build
    monkeypatch.setattr(fused, "_build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the run's graph is read where the load joins it (FusedRun.deferred): found damaged, the
        # file goes and the run is written from its ops; the next load builds and stores the plan
        again = npuflow.Session(path)
        assert built == [] and not stored.exists()
        npuflow.Session(path)
    assert built == [1]
    assert stored.read_bytes() != bytes(data)  # written anew
    ref = npuflow.Session(path, fuse=False).run(samples[0])
    out = again.run(samples[0])
    assert all(np.array_equal(out[k], ref[k]) for k in ref)
    stored.write_bytes(b"\0" * 7)  # shorter than its index length
    monkeypatch.setattr(fused, "_build", lambda *a, **k: built.append(2) or real_build(*a, **k))
    npuflow.Session(path)
    assert built == [1, 2]


def test_no_file_when_the_cache_is_off_or_the_build_warned(monkeypatch, fused_cache_on, cls_b4096):
    path, _ = cls_b4096
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    npuflow.Session(path)
    assert not (fused_cache_on / "fused").exists()
    monkeypatch.delenv("NPUFLOW_ENABLE_CACHE")
    real = fused._EMITTERS["conv"]

    def unknown_form(g, op, blobs):
        if op["name"] == first:
            raise KeyError("a manifest form the test makes up")
        return real(g, op, blobs)

    first = None

    def record(g, op, blobs):
        nonlocal first
        first = first or op["name"]
        return unknown_form(g, op, blobs)

    monkeypatch.setitem(fused._EMITTERS, "conv", record)
    with pytest.warns(RuntimeWarning, match="runs as its kernel, slower"):
        npuflow.Session(path)
    assert not list((fused_cache_on / "fused").glob("*"))  # nor a temporary file left behind
    with pytest.warns(RuntimeWarning, match="runs as its kernel, slower"):  # warned again
        npuflow.Session(path)


def test_other_threads_or_code_name_other_files(monkeypatch, fused_cache_on, cls_b4096):
    path, _ = cls_b4096
    npuflow.Session(path)
    npuflow.Session(path, threads=2)
    assert len(list((fused_cache_on / "fused").glob("*.bin"))) == 2
    monkeypatch.setattr(fused_cache, "source_digest", lambda sources: "another version of the runtime")
    npuflow.Session(path)
    assert len(list((fused_cache_on / "fused").glob("*.bin"))) == 3


def test_the_directory_keeps_the_most_recently_used_plans(monkeypatch, fused_cache_on, cls_b4096):
    path, _ = cls_b4096
    npuflow.Session(path)
    (first,) = (fused_cache_on / "fused").glob("*.bin")
    monkeypatch.setattr(fused_cache, "MAX_BYTES", first.stat().st_size + 1)
    npuflow.Session(path, threads=2)  # a second plan: the older one goes
    files = list((fused_cache_on / "fused").glob("*.bin"))
    assert len(files) == 1 and files[0] != first


def test_a_stored_run_left_alone_is_opened_at_load(monkeypatch, fused_cache_on, cls_b4096):
    # a load reads a stored plan's runs without opening them (FusedRun.deferred), joins what it can,
    # then opens the runs left alone: here every step is left alone (joins off), and each run's
    # session is open when the load returns, not at the first frame
    path, samples = cls_b4096
    npuflow.Session(path)
    monkeypatch.setattr(session_module.joined, "steps", lambda steps, *args: steps)
    monkeypatch.setattr(fused, "_build", _no_build)
    opened = _opened(monkeypatch)
    read = npuflow.Session(path)
    runs = [it for p in read._programs for step in p.steps for it in getattr(step.executor, "plan", fused.Plan([], {})).items
            if isinstance(it, fused.FusedRun)]
    assert runs and all(run.session is not None for run in runs) and len(opened) == len(runs)
    ref = npuflow.Session(path, fuse=False).run(samples[0])
    out = read.run(samples[0])
    assert all(np.array_equal(out[k], ref[k]) for k in ref) and len(opened) == len(runs)


def test_the_key_writes_one_op_at_a_time(monkeypatch, fused_cache_on):
    """The plan's name hashes a JSON text per op and tensor, never one text of the whole program (its
    small strings stayed in the loaded process's memory), and still tells programs apart by any op."""
    ops = [{"name": f"op{k}", "op": "relu", "inputs": [f"t{k}"], "outputs": [f"t{k + 1}"], "blobs": {},
            "attrs": {"x_zp": k, "out_shape": [1, 4]}} for k in range(3)]
    tensors = {f"t{k}": {"dtype": "int8", "shape": [1, 4]} for k in range(4)}
    written: list = []
    real = json.dumps
    monkeypatch.setattr(json, "dumps", lambda value, **kw: written.append(value) or real(value, **kw))
    first = fused_cache.key({"ops": ops, "outputs": ["t3"]}, tensors, lambda name: None, 1)
    assert max(real(value, default=str).count('"op":') for value in written) == 1
    changed = [*ops[:2], {**ops[2], "attrs": {**ops[2]["attrs"], "x_zp": 9}}]
    assert fused_cache.key({"ops": changed, "outputs": ["t3"]}, tensors, lambda name: None, 1) != first
