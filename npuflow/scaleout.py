"""Scale-out with existing engines: :func:`map_tasks` runs independent tasks serially, in a local
process pool (:mod:`concurrent.futures`, spawn context) or as Ray tasks.

Sharded calibration (:func:`npuflow.quant.calibrate.collect`), sensitivity analysis and the
mixed-precision search use it.  It is not a scheduler — the pool or Ray schedules; this module
only does what both engines leave to their caller:

* the data every task needs (``context``: model bytes, samples, the metric) is pickled once and
  sent once per worker process (the pool's initializer; one ``ray.put`` that each Ray worker
  fetches once), not with every task;
* ``items`` are pulled lazily and at most ``2 * workers`` tasks are in flight, so a calibration
  stream never sits in memory whole and a time budget can stop starting tasks;
* results come back in the order of ``items``, whatever order the tasks finish in: a parallel
  run returns the serial run's results;
* ``progress(item, done, total)`` is called as each task finishes (``done``: tasks finished);
* a worker's :class:`NpuflowError` is re-raised here as it was raised; any other failure (an
  exception, a worker killed for memory) becomes ``NPF_SCALEOUT_WORKER_FAILED`` naming the task.

``workers=1`` without ``ray_address`` runs the tasks here, in order, with nothing pickled: the
serial path.  Task functions are module-level functions ``fn(context, item)``; ``context`` is
the same object for every task a process runs, so a task may cache what it derives from it (an
ONNX Runtime session) with :func:`memo`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import NpuflowError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: ``progress(item, done, total)`` after each finished task; ``total`` is None when unknown.
Progress = Callable[[Any, int, "int | None"], None]

#: Upper bound of a worker count: far above any one machine, low enough to catch a typo.
MAX_WORKERS = 256
#: The Ray release of the ``distributed`` extra (named in the error when Ray is missing).
RAY_VERSION = "2.60.0"
#: Tasks in flight per worker: one running, one queued, so no worker waits for the next item.
IN_FLIGHT_PER_WORKER = 2


def check_workers(value: Any, option: str = "--workers") -> int:
    """``value`` as a worker count, or ``NPF_SCALEOUT_BAD_WORKERS``."""
    if isinstance(value, bool) or not isinstance(value, int):
        reason = "not a whole number"
    elif not 1 <= value <= MAX_WORKERS:
        reason = f"outside 1..{MAX_WORKERS}"
    else:
        return value
    raise NpuflowError("NPF_SCALEOUT_BAD_WORKERS", option=option, value=value, reason=reason, limit=MAX_WORKERS)


def parallel(workers: int, ray_address: str | None = None) -> bool:
    """Whether :func:`map_tasks` leaves this process (callers keep their serial path otherwise)."""
    return bool(ray_address) or check_workers(workers) > 1


def memo(context: dict, key: str, make: Callable[[], T]) -> T:
    """``context[key]``, made on first use: what a worker derives once from its context."""
    if key not in context:
        context[key] = make()
    return context[key]


def require_picklable(obj: Any, what: str) -> None:
    """``NPF_SCALEOUT_NOT_PICKLABLE`` unless ``obj`` can travel to a worker process."""
    try:
        pickle.dumps(obj)
    except Exception as exc:  # pickle raises PicklingError, AttributeError, TypeError
        raise NpuflowError("NPF_SCALEOUT_NOT_PICKLABLE", what=what, reason=str(exc)) from None


def map_tasks(fn: Callable[[Any, T], R], items: Iterable[T], workers: int = 1, ray_address: str | None = None,
              progress: Progress | None = None, *, context: Any = None, total: int | None = None) -> Iterator[R]:
    """``fn(context, item)`` for every item, in item order (see the module docstring); the
    workers are started for this call and stopped when its results are consumed."""
    check_workers(workers)

    def run() -> Iterator[R]:
        with Workers(workers, ray_address, context) as pool:
            yield from pool.map(fn, items, progress, total)

    return run()


class Workers:
    """Workers kept across several :meth:`map` calls that share one context (the mixed-precision
    search's rounds: one pool start, one copy of the models per worker)."""

    def __init__(self, workers: int = 1, ray_address: str | None = None, context: Any = None) -> None:
        workers = check_workers(workers)
        self.context = context
        self.engine: _PoolEngine | _RayEngine | None = None
        if ray_address:
            self.engine = _RayEngine(context, ray_address, workers)
        elif workers > 1:
            self.engine = _PoolEngine(context, workers)
        #: tasks worth starting at once (1: the serial path)
        self.width = 1 if self.engine is None else self.engine.slots

    def map(self, fn: Callable[[Any, T], R], items: Iterable[T], progress: Progress | None = None,
            total: int | None = None) -> Iterator[R]:
        if self.engine is None:
            return _serial(fn, self.context, items, progress, total)
        require_picklable(fn, "the task function")
        return _drive(self.engine, fn, items, progress, total)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serial(fn: Callable, context: Any, items: Iterable, progress: Progress | None, total: int | None) -> Iterator:
    for done, item in enumerate(items, 1):
        result = fn(context, item)
        if progress is not None:
            progress(item, done, total)
        yield result


def _drive(engine: "_PoolEngine | _RayEngine", fn: Callable, items: Iterable, progress: Progress | None,
           total: int | None) -> Iterator:
    """Keep ``IN_FLIGHT_PER_WORKER`` tasks per worker in flight, report each as it finishes,
    yield in item order; tasks left after an error or an early stop are cancelled."""
    pending: deque[tuple[int, Any, Any]] = deque()
    finished: set[int] = set()
    count = 0
    source = enumerate(items)
    try:
        while True:
            while len(pending) < IN_FLIGHT_PER_WORKER * engine.slots and (nxt := next(source, None)) is not None:
                pending.append((nxt[0], nxt[1], engine.submit(fn, nxt[1])))
            if not pending:
                return
            for index, item, _ in engine.done_of([p for p in pending if p[0] not in finished]):
                finished.add(index)
                count += 1
                if progress is not None:
                    progress(item, count, total)
            while pending and pending[0][0] in finished:
                index, item, handle = pending.popleft()
                finished.discard(index)
                yield engine.result(handle, item)
    finally:
        engine.cancel([p[2] for p in pending])


def _unwrap(outcome: tuple) -> Any:
    """A task's ``("ok", result)`` or ``("error", code, fields)`` as a result or the coded error."""
    if outcome[0] == "error":
        raise NpuflowError(outcome[1], **outcome[2])
    return outcome[1]


def _worker_failed(engine: str, item: Any, exc: BaseException) -> NpuflowError:
    reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return NpuflowError("NPF_SCALEOUT_WORKER_FAILED", engine=engine, task=_label(item), reason=reason)


def _label(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the task wrapper, run in the workers ---------------------------------------------------

_CONTEXT: Any = None
_TOKEN: str | None = None


def _run_task(fn: Callable, item: Any) -> tuple:
    """Run one task on this process's context; a coded error travels back as data (its
    constructor takes keywords, which exception pickling does not pass)."""
    try:
        return ("ok", fn(_CONTEXT, item))
    except NpuflowError as exc:
        return ("error", exc.code, exc.fields)


def _init_pool_worker(blob: bytes) -> None:
    """Pool initializer: the context, once per process; Ctrl-C is the parent's to handle (a
    worker's KeyboardInterrupt would print a traceback per process)."""
    global _CONTEXT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CONTEXT = pickle.loads(blob)


def _ray_task(fn: Callable, token: str, holder: list, item: Any) -> tuple:
    """A Ray task: fetch the context once per worker process (``holder`` wraps the object
    reference so Ray does not resolve it for every task)."""
    global _CONTEXT, _TOKEN
    if _TOKEN != token:
        import ray

        _CONTEXT, _TOKEN = pickle.loads(ray.get(holder[0])), token
    return _run_task(fn, item)


# --- engines ----------------------------------------------------------------------------------

class _PoolEngine:
    """A spawn-context process pool (fork would copy ONNX Runtime's thread pools' state)."""

    name = "process pool"

    def __init__(self, context: Any, workers: int) -> None:
        blob = _context_blob(context)
        cpus = os.cpu_count() or 1
        if workers > cpus:
            log.warning("%d workers on %d CPU cores: they share the cores, expect no speed-up beyond %d",
                        workers, cpus, cpus)
        self.slots = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_pool_worker, initargs=(blob,))

    def submit(self, fn: Callable, item: Any) -> Future:
        return self.pool.submit(_run_task, fn, item)

    def done_of(self, pending: list[tuple[int, Any, Future]]) -> list[tuple[int, Any, Future]]:
        done, _ = wait([p[2] for p in pending], return_when=FIRST_COMPLETED)
        return [p for p in pending if p[2] in done]

    def result(self, future: Future, item: Any) -> Any:
        try:
            outcome = future.result()
        except Exception as exc:  # a raised exception or a dead worker (BrokenProcessPool)
            raise _worker_failed(self.name, item, exc) from None
        return _unwrap(outcome)

    def cancel(self, unfinished: list[Future]) -> None:
        for future in unfinished:
            future.cancel()  # queued ones; a running task finishes

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RayEngine:
    """Ray tasks on the cluster at ``address`` (``auto``: the running one; ``local``: a new
    single-machine Ray started by this process); a Ray already initialised here is used as is."""

    name = "Ray"

    def __init__(self, context: Any, address: str, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise NpuflowError("NPF_SCALEOUT_RAY_MISSING", address=address, version=RAY_VERSION) from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except Exception as exc:  # ConnectionError, ValueError, RuntimeError by version
                raise NpuflowError("NPF_SCALEOUT_RAY_CONNECT", address=address,
                                   reason=str(exc).strip().splitlines()[0]) from None
        self.slots = workers if workers > 1 else max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.holder = [ray.put(_context_blob(context))]
        self.token = uuid.uuid4().hex
        self.remote = ray.remote(_ray_task)

    def submit(self, fn: Callable, item: Any) -> Any:
        return self.remote.remote(fn, self.token, self.holder, item)

    def done_of(self, pending: list[tuple[int, Any, Any]]) -> list[tuple[int, Any, Any]]:
        ready, _ = self.ray.wait([p[2] for p in pending], num_returns=1)
        return [p for p in pending if p[2] in ready]

    def result(self, ref: Any, item: Any) -> Any:
        try:
            outcome = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            raise _worker_failed(self.name, item, getattr(exc, "cause", None) or exc) from None
        return _unwrap(outcome)

    def cancel(self, unfinished: list) -> None:
        for ref in unfinished:
            self.ray.cancel(ref)

    def close(self) -> None:
        self.holder.clear()  # the context's object-store copy may go


def _context_blob(context: Any) -> bytes:
    try:
        return pickle.dumps(context, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise NpuflowError("NPF_SCALEOUT_NOT_PICKLABLE", what="the task context", reason=str(exc)) from None
