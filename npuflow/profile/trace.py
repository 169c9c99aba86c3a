"""Chrome trace-event JSON (opens in Perfetto / chrome://tracing): one track per thread.

:func:`chrome_trace` turns run events into complete ("X") events with one ``tid`` per thread and
thread-name metadata; :func:`trace` is a context manager for user code that records every
subgraph run of the given sessions, plus any ``span(name)`` blocks of the user's own code
(pre/post-processing, like vaitrace's "CPU Functions"), and writes the file on exit.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..model import write_atomic
from ..placement import Device
from .events import Recorder, RunEvent


def chrome_trace(events: Sequence[RunEvent], *, process_name: str = "npuflow") -> dict[str, Any]:
    """Trace-event JSON object: ``ts``/``dur`` in microseconds from the first event."""
    t0 = min((e.start_ns for e in events), default=0)
    threads = sorted({e.thread_id for e in events}, key=lambda t: min(e.start_ns for e in events if e.thread_id == t))
    tid = {t: i + 1 for i, t in enumerate(threads)}
    pid = os.getpid()
    out: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                                  "args": {"name": process_name}}]
    out += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid[t], "args": {"name": f"thread {tid[t]}"}}
            for t in threads]
    for e in sorted(events, key=lambda e: e.start_ns):
        out.append({
            "name": e.name, "cat": e.device, "ph": "X", "pid": pid, "tid": tid[e.thread_id],
            "ts": (e.start_ns - t0) / 1e3, "dur": max(e.end_ns - e.start_ns, 0) / 1e3,
            "args": {"device": e.device, "subgraph": e.subgraph},
        })
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def write_chrome_trace(events: Sequence[RunEvent], path: str | os.PathLike) -> Path:
    return write_atomic(path, json.dumps(chrome_trace(events)))


class TraceContext:
    """What ``with trace(...) as t`` gives: the recorder and a ``span`` helper for user code."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Record a block of the caller's own code as a CPU span on the calling thread."""
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.recorder.add(RunEvent(name, Device.CPU, threading.get_ident(), start, time.perf_counter_ns()))

    @property
    def events(self) -> list[RunEvent]:
        return self.recorder.snapshot()


@contextmanager
def trace(path: str | os.PathLike, *sessions: Any) -> Iterator[TraceContext]:
    """Record the subgraph runs of ``sessions`` (``npuflow.runtime.Session``) into ``path``.

    ``with npuflow.profile.trace("trace.json", sess) as t: sess.run(feed)`` writes the file when
    the block ends (also when it raises, so a failing run can still be inspected).
    """
    rec = Recorder()
    listener = rec.listener  # one bound-method object, so that remove_listener finds it
    for s in sessions:
        s.add_listener(listener)
    ctx = TraceContext(rec)
    try:
        yield ctx
    finally:
        for s in sessions:
            remove = getattr(s, "remove_listener", None)
            if remove is not None:
                remove(listener)
        write_chrome_trace(rec.snapshot(), path)
