"""Issue 19, load memory and time: the per-operation checks of ONNX Runtime's own kernels
(``fused_qlinear``: ``QLinearSigmoid``, ``QLinearMul``, ``QLinearAdd``, ``QuantizeLinear``, each
run at load with the operation's scales) keep their verdicts in the kernel probes' disk cache
(``ort_verdicts.persistent_check``), so a later load of the model opens none of their one-node
sessions (YOLOv8n cpu-int8: 123 of a load's 128) and runs the same fused graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

import npuflow
from npuflow import ort_verdicts
from npuflow.runtime import fused_pairs, fused_qlinear
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, _x

CHECKS = ("_qlinear_add_matches", "_mul_matches", "_sigmoid_matches", "_quantize_matches", "_dequantize_matches")


def _silu_block() -> Builder:
    """A float model input quantized to uint8 -> conv -> SiLU (Sigmoid, Mul) -> + the conv: YOLOv8n's
    pattern, whose sigmoid, product, add and input quantize step run on ONNX Runtime's kernels."""
    rng = np.random.default_rng(7)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043, 128, "uint8")
    w = b.weight("w", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), np.full(8, 0.009, np.float32), axis=0)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv", pads=[1] * 4), 0.06, 120, "uint8")
    s = b.quantize(b.node("Sigmoid", [b.dq(c)], "sig"), 1 / 256, 0, "uint8")
    m = b.quantize(b.node("Mul", [b.dq(c), b.dq(s)], "silu"), 0.0331, 9, "uint8")
    b.output(b.quantize(b.node("Add", [b.dq(m), b.dq(c)], "add"), 0.07, 125, "uint8"), "out")
    return b


def _new_process() -> None:
    """This process' verdicts forgotten, as a new process starts."""
    for name in CHECKS:
        check = getattr(fused_qlinear, name, None)
        if check is not None:
            check.cache_clear()


@pytest.fixture
def opened(monkeypatch, tmp_path):
    """The op type of every check session opened, with the disk cache in ``tmp_path`` and empty."""
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv(ort_verdicts.CACHE_ENV, raising=False)
    sessions: list[str] = []
    real = fused_qlinear.probe_session

    def counting(nodes, *args, **kwargs):
        sessions.append(nodes[0].op_type)
        return real(nodes, *args, **kwargs)

    monkeypatch.setattr(fused_qlinear, "probe_session", counting)
    monkeypatch.setattr(fused_pairs, "probe_session", counting)  # the all-pairs checks' sessions
    _new_process()
    yield sessions
    _new_process()


def test_a_second_load_opens_no_check_session_and_computes_the_same(opened, monkeypatch):
    compiled = npuflow.compile(_silu_block().model(), CPU)
    feeds = {"x": _x([1, 8, 12, 12], 8, 2.0)}
    first = npuflow.Session(compiled).run(feeds)
    assert {"QLinearSigmoid", "QLinearMul", "QLinearAdd"} <= set(opened), opened
    _new_process()
    opened.clear()
    second = npuflow.Session(compiled)
    assert opened == []
    ref = npuflow.Session(compiled, fuse=False).run(feeds)
    for out in (second.run(feeds), first):
        assert out.keys() == ref.keys() and all(np.array_equal(out[k], ref[k]) for k in ref)
    kinds = {n.op_type for ex in second._executors if hasattr(ex, "plan") for it in ex.plan.items
             if hasattr(it, "graph") for n in it.graph().nodes}
    assert {"QLinearSigmoid", "QLinearMul", "QLinearAdd"} <= kinds, kinds
    # NPUFLOW_ENABLE_CACHE=0: every load checks again
    monkeypatch.setenv(ort_verdicts.CACHE_ENV, "0")
    _new_process()
    opened.clear()
    npuflow.Session(compiled)
    assert {"QLinearSigmoid", "QLinearMul", "QLinearAdd"} <= set(opened), opened


def test_a_stored_refusal_is_kept_too(opened):
    """A check that refuses (here: a table that is not the sigmoid's) is stored as such."""
    table = np.arange(256, dtype=np.int64).tobytes()
    assert not fused_qlinear._sigmoid_matches(0.06, 120, 1 / 256, 0, table)
    _new_process()
    opened.clear()
    assert not fused_qlinear._sigmoid_matches(0.06, 120, 1 / 256, 0, table)
    assert opened == []


def test_a_changed_checks_verdicts_are_another_file(opened):
    """A check's verdicts at another source (another checkout's or an older npuflow's) are a file of
    their own, so checkouts sharing one cache no longer drop each other's at every store (each
    dropped verdict is a check session opened again at the next load: YOLOv8n cpu-int8 opens 123);
    beyond ``KEEP_VERSIONS`` the least recently written versions' files go."""
    family = "npuflow.runtime.fused_qlinear._mul_matches"
    ort_verdicts._store(f"{family}@0123456789abcdef:00", True)
    fused_qlinear._mul_matches(0.02, 9, 0, 9, None)  # probes and stores its verdict
    files = sorted(ort_verdicts.cache_file().parent.glob(f"*.{family}@*.json"))
    assert len(files) == 2, files
    old = ort_verdicts.cache_file(f"{family}@0123456789abcdef")
    assert json.loads(old.read_text()) == {f"{family}@0123456789abcdef:00": True}
    ours = next(f for f in files if f != old)
    assert len(json.loads(ours.read_text())) == 1
    for k in range(ort_verdicts.KEEP_VERSIONS):
        ort_verdicts._store(f"{family}@{k:016x}:00", False)
    left = sorted(ort_verdicts.cache_file().parent.glob(f"*.{family}@*.json"))
    assert len(left) == ort_verdicts.KEEP_VERSIONS and ours not in left and old not in left


def test_a_helper_beside_the_check_is_part_of_its_key(tmp_path):
    """A check's verdict depends on the helpers it calls in its package too (the runtime's checks
    run their pairs through ``fused_pairs.on_all_pairs``): an edit of one gives the check's
    verdicts another version, so a verdict another checkout stored with an edited helper is not
    read as this one's (a stale refusal split PP-OCR cls's fused run in three, 1.39x slower)."""
    package = tmp_path / "pkg"
    package.mkdir()
    check, helper = package / "check.py", package / "helper.py"
    check.write_text("def matches(): return True\n")
    helper.write_text("def pairs(): return 1\n")
    before = ort_verdicts._source_digest(check)
    helper.write_text("def pairs(): return 2\n")
    ort_verdicts._source_digest.cache_clear()
    assert ort_verdicts._source_digest(check) != before
    (package / "notes.txt").write_text("not a source")
    ort_verdicts._source_digest.cache_clear()
    after = ort_verdicts._source_digest(check)
    assert after == ort_verdicts._source_digest(check)
