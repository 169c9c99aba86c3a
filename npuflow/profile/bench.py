"""Measured performance of the runtime (like ``hrt_model_exec perf``): N threads, F frames.

Every thread takes frames from a shared counter (or runs until ``perf_time`` minutes pass) and
calls ``Session.run`` on the same inputs; the session's listener records every subgraph run.
Formulas as in the Horizon tool: average latency = total frame latency / frames, frame rate =
frames / program run time (so more threads raise the frame rate, not the per-frame latency).
These are times of the npuflow runtime on this host (the integer simulator for NPU parts), not
times on the chip; ``npuflow perf`` gives the estimate for the chip.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import NpuflowError
from ..perf.cpu_time import within_input_ranges
from .events import Recorder, RunEvent

MAX_THREADS = 8


@dataclass
class BenchResult:
    thread_num: int
    frame_count: int
    run_time_ms: float
    frame_latencies_ms: list[float]
    submit_ms: list[float] = field(default_factory=list)  # run() called -> first subgraph starts
    schedule_ms: list[float] = field(default_factory=list)  # time between subgraphs inside a frame
    events: list[RunEvent] = field(default_factory=list)

    @property
    def total_latency_ms(self) -> float:
        return sum(self.frame_latencies_ms)

    @property
    def average_latency_ms(self) -> float:
        return self.total_latency_ms / max(self.frame_count, 1)

    @property
    def fps(self) -> float:
        return self.frame_count / (self.run_time_ms / 1e3) if self.run_time_ms else 0.0


def _spec(x: Any, *names: str) -> Any:
    for n in names:
        if hasattr(x, n):
            return getattr(x, n)
    return None


def random_inputs(session: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the declared names, shapes and dtypes of ``session``'s model, float ones
    inside the range the model's input quantize step represents (:func:`~npuflow.perf.cpu_time.within_input_ranges`)."""
    rng = np.random.default_rng(seed)
    specs = session.get_inputs() if hasattr(session, "get_inputs") else session.inputs
    feed = {}
    for s in specs:
        shape = [int(d) for d in _spec(s, "shape", "dims")]
        dtype = np.dtype(_spec(s, "dtype") or np.float32)
        if np.issubdtype(dtype, np.integer):  # 0 or 1: a valid token id, index or mask value for any model
            feed[_spec(s, "name")] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feed[_spec(s, "name")] = rng.standard_normal(shape).astype(dtype)
    return within_input_ranges(session, feed, seed)


def bench(
    session: Any,
    *,
    thread_num: int = 1,
    frame_count: int = 200,
    perf_time_min: float = 0.0,
    inputs: Mapping[str, np.ndarray] | None = None,
    on_frame: Callable[[], None] | None = None,
) -> BenchResult:
    """Run ``session`` from ``thread_num`` threads; ``perf_time_min > 0`` runs for that long instead."""
    if not 1 <= thread_num <= MAX_THREADS:
        raise NpuflowError("NPF_PERF_BAD_THREADS", value=thread_num, high=MAX_THREADS)
    if perf_time_min <= 0 and frame_count < 1:
        raise NpuflowError("NPF_PERF_BAD_FRAMES", value=frame_count)
    feed = dict(inputs) if inputs is not None else random_inputs(session)
    rec = Recorder()
    listener = rec.listener  # one bound-method object, so that remove_listener finds it
    session.add_listener(listener)
    session.run(feed)  # warm-up, not counted (first-run allocations)
    rec.clear()
    lock = threading.Lock()
    counter = {"next": 0}
    frames: list[tuple[int, int, int]] = []  # (thread, start_ns, end_ns)
    deadline = time.perf_counter() + perf_time_min * 60 if perf_time_min > 0 else None
    errors: list[BaseException] = []
    stop = threading.Event()  # set when the caller is interrupted (Ctrl-C): workers finish their frame

    def worker() -> None:
        while not stop.is_set():
            with lock:
                if deadline is None and counter["next"] >= frame_count:
                    return
                counter["next"] += 1
            if deadline is not None and time.perf_counter() >= deadline:
                return
            start = time.perf_counter_ns()
            try:
                session.run(feed)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)
                return
            end = time.perf_counter_ns()
            with lock:
                frames.append((threading.get_ident(), start, end))
            if on_frame is not None:
                on_frame()

    threads = [threading.Thread(target=worker, name=f"bench-{i}") for i in range(thread_num)]
    t0 = time.perf_counter_ns()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:
        stop.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join()
        raise
    run_ns = time.perf_counter_ns() - t0
    remove = getattr(session, "remove_listener", None)
    if remove is not None:
        remove(listener)
    if errors:
        raise errors[0]
    events = rec.snapshot()
    submit, schedule = _task_phases(frames, events)
    return BenchResult(
        thread_num=thread_num, frame_count=len(frames), run_time_ms=run_ns / 1e6,
        frame_latencies_ms=[(e - s) / 1e6 for _, s, e in frames], submit_ms=submit, schedule_ms=schedule,
        events=events,
    )


def _task_phases(frames: list[tuple[int, int, int]], events: list[RunEvent]) -> tuple[list[float], list[float]]:
    """Per frame: submit = run() call to its first subgraph; schedule = gaps between its subgraphs."""
    by_thread: dict[int, list[RunEvent]] = {}
    for e in events:
        by_thread.setdefault(e.thread_id, []).append(e)
    submit, schedule = [], []
    for tid, start, end in frames:
        inside = sorted((e for e in by_thread.get(tid, []) if start <= e.start_ns and e.end_ns <= end),
                        key=lambda e: e.start_ns)
        if not inside:
            continue
        submit.append((inside[0].start_ns - start) / 1e6)
        busy = sum(e.end_ns - e.start_ns for e in inside)
        schedule.append(max(inside[-1].end_ns - inside[0].start_ns - busy, 0) / 1e6)
    return submit, schedule


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"avg_time": 0.0, "max_time": 0.0, "min_time": 0.0}
    return {"avg_time": round(statistics.fmean(values), 6), "max_time": round(max(values), 6),
            "min_time": round(min(values), 6)}


def profiler_log(result: BenchResult) -> dict[str, Any]:
    """``profiler.log`` content: ``model_latency`` per subgraph / CPU node and ``task_latency`` (ms)."""
    per: dict[str, list[float]] = {}
    for e in result.events:
        per.setdefault(e.name, []).append(e.ms)
    return {
        "model_latency": {name: _stats(v) for name, v in per.items()},
        "task_latency": {
            "TaskRunningTime": _stats(result.frame_latencies_ms),
            "TaskScheduleTime": _stats(result.schedule_ms),
            "TaskSubmitTime": _stats(result.submit_ms),
        },
    }


def format_result(result: BenchResult) -> str:
    """The console text of ``hrt_model_exec perf``: Running condition, then Perf result."""
    return "\n".join([
        "Running condition:",
        f"  Thread number is: {result.thread_num}",
        f"  Frame count   is: {result.frame_count}",
        f"  Program run time: {result.run_time_ms:.6f}  ms",
        "Perf result:",
        f"  Frame totally latency is: {result.total_latency_ms:.6f}  ms",
        f"  Average    latency    is: {result.average_latency_ms:.6f}  ms",
        f"  Frame      rate       is: {result.fps:.6f}  FPS",
    ])
