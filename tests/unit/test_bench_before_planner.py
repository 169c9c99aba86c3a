"""The runtime benchmark's ``--before REV`` column builds its Session with npuflow's caches off.

A revision's ``fused.plan`` looks its plan up under the current sources' key (``runtime/fused_cache.py``),
so with the caches on it opened the plan the current Session had just stored and the column timed the
current graphs twice (session 37: PP-OCR cls read "0.95x" against its own code)."""

from __future__ import annotations

import os

from benchmarks import bench_runtime as B
from npuflow.outputs import CACHE_ENV, cache_enabled


def test_before_planner_session_is_built_with_the_caches_off(monkeypatch):
    seen = []

    def session(path, **kwargs):
        from npuflow.runtime import fused
        seen.append((cache_enabled(), fused.plan))
        return "session"

    monkeypatch.setenv(CACHE_ENV, "1")
    monkeypatch.setattr(B.npuflow, "Session", session)
    planner = object()
    assert B._session_with_planner("model.npuf", planner, threads=1) == "session"
    assert seen == [(False, planner)]
    assert os.environ[CACHE_ENV] == "1"  # restored
    monkeypatch.delenv(CACHE_ENV)
    B._session_with_planner("model.npuf", planner, threads=1)
    assert CACHE_ENV not in os.environ
