"""Issue 19, peak memory of a loaded model: a ``Session`` that read its ``.npuf`` itself does not hold
the parsed manifest once its executors are built (PP-OCRv4 rec cpu-int8: 1.5 MiB of Python objects,
most of them cpu-int8's per-channel epilogue lists; docs/compiler-runtime.md, "Peak memory").  Dump
mode, ``run_op``, runners and ``compiled.manifest`` read it again from the mapped file, with the same
results as a Session over a caller's own ``CompiledModel``, which keeps its manifest."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest

import npuflow
from npuflow.runtime.executors import IntegerExecutor
from tests import fixture_models
from tests.compile_check import random_sample_npuf


@pytest.fixture(scope="module")
def cls_cpu_int8(tmp_path_factory):
    return random_sample_npuf(fixture_models.ppocr_cls(), "cpu-int8", "x", [1, 3, 48, 192], 3,
                              tmp_path_factory.mktemp("cls") / "cls.npuf")


def _epilogue_ops() -> dict[int, dict]:
    """Every op dict of a parsed manifest alive in the process that carries a per-channel epilogue."""
    gc.collect()
    return {id(o): o for o in gc.get_objects()
            if isinstance(o, dict) and "blobs" in o and isinstance(o.get("attrs"), dict) and "epilogue" in o["attrs"]}


def _kernel_ops(session: npuflow.Session) -> set[int]:
    """The ops the session's executors run as kernels every frame (held on purpose)."""
    return {id(step.executor._ops[k]) for step in session._programs[0].steps
            if isinstance(step.executor, IntegerExecutor) for k in step.executor.plan.items if isinstance(k, int)}


def test_a_session_holds_no_fused_op_of_its_manifest(cls_cpu_int8):
    path, samples = cls_cpu_int8
    earlier = set(_epilogue_ops())
    session = npuflow.Session(path)
    held = {k: o for k, o in _epilogue_ops().items() if k not in earlier and k not in _kernel_ops(session)}
    assert held == {}, f"{len(held)} ops of the manifest still held after the Session's build"
    whole = npuflow.CompiledModel.load(path).manifest
    assert session.compiled.manifest == whole  # read again from the mapped file, whole
    assert session.input_shapes == [{"x": [1, 3, 48, 192]}]
    ops = [op for sg in whole["subgraphs"] if sg["engine"] == "integer" for op in sg["ops"]]
    assert any("epilogue" in op["attrs"] for op in ops)  # cpu-int8's float multipliers: the test sees them
    del whole, ops
    session.run(samples[0])
    assert not {k for k in _epilogue_ops() if k not in earlier and k not in _kernel_ops(session)}


def test_a_callers_compiled_model_keeps_its_manifest(cls_cpu_int8):
    path, _ = cls_cpu_int8
    compiled = npuflow.CompiledModel.load(path)
    npuflow.Session(compiled)
    assert compiled.manifest is compiled.manifest  # held, not parsed again on each read


def test_dump_mode_run_op_and_runners_read_it_again(cls_cpu_int8, tmp_path):
    path, samples = cls_cpu_int8
    session, reference = npuflow.Session(path), npuflow.Session(npuflow.CompiledModel.load(path))
    x = samples[1]
    out, want = session.run(x, dump_dir=tmp_path / "a"), reference.run(x, dump_dir=tmp_path / "b")
    assert all(np.array_equal(out[k], want[k]) for k in want)
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index == json.loads((tmp_path / "b" / "index.json").read_text()) and len(index) > 50
    dumped = {name: np.load(tmp_path / "a" / f) for name, f in index.items()}
    assert all(np.array_equal(dumped[n], np.load(tmp_path / "b" / f)) for n, f in index.items())
    earlier = set(_epilogue_ops())
    session.run(x, dump_dir=tmp_path / "c")  # the dump session exists now: no manifest pinned by it
    assert not {k for k in _epilogue_ops() if k not in earlier and k not in _kernel_ops(session)}
    manifest = reference.compiled.manifest
    convs = [op for sg in manifest["subgraphs"] if sg["engine"] == "integer" for op in sg["ops"]
             if "epilogue" in op["attrs"] and all(t in dumped for t in op["inputs"])]
    assert len(convs) >= 10
    for op in convs[::5]:
        feeds = {t: dumped[t] for t in op["inputs"]}
        got, expected = session.run_op(op["name"], feeds), reference.run_op(op["name"], feeds)
        assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
        assert all(np.array_equal(got[k], dumped[k]) for k in got)  # the op's kernel equals the fused run
    assert ([r.get_input_tensors() for r in session.runners()]
            == [r.get_input_tensors() for r in reference.runners()])
