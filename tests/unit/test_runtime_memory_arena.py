"""One ONNX Runtime arena for all of a ``Session``'s sessions, and the freed heap given back
(issue 19, peak memory).

Every fused run and CPU subgraph is an ONNX Runtime session; with an arena each, every session
kept the chunks of its own largest run, and their sum was in the peak (PP-OCRv4 rec on B4096: 42
sessions).  They now allocate from one arena registered with ONNX Runtime's environment
(``ort_session.shared_arena``), which changes where buffers live, not what is computed; and the
end of a load hands the C heap's free pages back (``session.return_freed_heap``).
"""

from __future__ import annotations

import ctypes

import numpy as np

import npuflow
from npuflow import ort_session
from npuflow.runtime import executors, fused, joined, session as session_module
from tests.unit.test_compiler_kernels import _x
from tests.unit.test_runtime_cpu_weights import K, _head

DPU = "DPUCZDX8G_ISA1_B4096"
ENV = "session.use_env_allocators"


def _sessions(s: npuflow.Session) -> list:
    """The ONNX Runtime sessions of ``s``'s fused runs, CPU subgraphs and joined steps that a frame
    runs (a joined step's parts have none: ``runtime/joined.py``)."""
    found = []
    for ex in (step.executor for p in s._programs for step in p.steps):
        if isinstance(ex, (executors.OnnxExecutor, joined.Joined)) and ex.session is not None:
            found.append(ex.session)
        for item in getattr(getattr(ex, "plan", None), "items", []):
            if isinstance(item, fused.FusedRun):
                found.append(item.session)
    return found


def _apart(monkeypatch) -> None:
    """Loads that leave every step apart (no :mod:`.joined` step): the head's convolution and its
    CPU subgraph are one joined session otherwise."""
    monkeypatch.setattr(session_module.joined, "steps", lambda steps, *args: steps)


def _uses_env_arena(o) -> bool:
    try:
        return o.get_session_options().get_session_config_entry(ENV) == "1"
    except RuntimeError:  # ONNX Runtime's answer for a key that was never set
        return False


def test_the_runtimes_sessions_share_the_environments_arena(monkeypatch):
    assert ort_session.shared_arena()  # registered once; asking again changes nothing
    assert ort_session.shared_arena()
    compiled = npuflow.compile(_head().model(), DPU)
    (one,) = _sessions(npuflow.Session(compiled))  # the joined session
    assert _uses_env_arena(one)
    _apart(monkeypatch)
    s = npuflow.Session(compiled)
    found = _sessions(s)
    # the head's float MatMul stays a CPU subgraph (4100 outputs), the convolution a fused run
    assert any(isinstance(ex, executors.OnnxExecutor) for ex in s._executors) and len(found) >= 2
    assert all(map(_uses_env_arena, found))


def test_shared_and_own_arenas_give_the_same_outputs(monkeypatch):
    compiled = npuflow.compile(_head().model(), DPU)
    shared = npuflow.Session(compiled)
    monkeypatch.setattr(ort_session, "shared_arena", lambda: False)  # as where ONNX Runtime refuses it
    own = npuflow.Session(compiled)
    assert not any(map(_uses_env_arena, _sessions(own)))
    for seed in range(4):
        feeds = {"x": _x([1, K, 1, 6], seed, 2.0 + seed)}
        a, b = shared.run(feeds), own.run(feeds)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_load_gives_the_freed_heap_back(monkeypatch):
    calls = []
    real = session_module.return_freed_heap
    monkeypatch.setattr(session_module, "return_freed_heap", lambda: calls.append(1) or real())
    _apart(monkeypatch)
    s = npuflow.Session(npuflow.compile(_head().model(), DPU))
    # once the CPU subgraphs are open, before each fused run's session is created, after each
    # integer program's build, and at the end
    integer = [ex for ex in s._executors if isinstance(ex, executors.IntegerExecutor)]
    runs = sum(isinstance(item, fused.FusedRun) for ex in integer for item in ex.plan.items)
    assert integer and runs >= 1 and len(calls) == 2 + len(integer) + runs
    assert real() == hasattr(ctypes.CDLL(None), "malloc_trim")  # glibc here: True
