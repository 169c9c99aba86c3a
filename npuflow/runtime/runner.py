"""A VART-style runner per subgraph: ``get_input_tensors``, ``execute_async``, ``wait``.

As in VART's Python ``Runner``, inputs and outputs are C-contiguous numpy arrays the caller
allocates (from :meth:`Runner.get_input_tensors`/:meth:`Runner.get_output_tensors`) and reuses;
``execute_async`` returns a job id and raises on bad buffers; ``wait(job_id)`` blocks until the
outputs are filled and returns 0.  Jobs run on a shared worker pool, so several jobs (from one
or many runners) can be in flight at once.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import NpuflowError

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="npuflow-job")
        return _POOL


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape, dtype and quantization of a runner/session tensor (``xir::Tensor``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: dict | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class Runner:
    """Runs one subgraph of a session; created by :meth:`npuflow.runtime.Session.runners`."""

    def __init__(self, session, index: int) -> None:
        self._session = session
        self.index = index
        sg = session.compiled.manifest["subgraphs"][index]
        self.name = sg["name"]
        self.device = sg["device"]
        tensors = session.compiled.manifest["tensors"]
        self._inputs = [TensorInfo(t, tuple(tensors[t]["shape"]), tensors[t]["dtype"], tensors[t].get("quant"))
                        for t in sg["inputs"]]
        self._outputs = [TensorInfo(t, tuple(tensors[t]["shape"]), tensors[t]["dtype"], tensors[t].get("quant"))
                         for t in sg["outputs"]]
        self._jobs: dict[int, Future] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def get_input_tensors(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_output_tensors(self) -> list[TensorInfo]:
        return list(self._outputs)

    def get_tensor_format(self) -> str:
        return "NCHW"

    def _check(self, arrays: list[np.ndarray], infos: list[TensorInfo], kind: str) -> None:
        ok = len(arrays) == len(infos) and all(
            isinstance(a, np.ndarray) and tuple(a.shape) == t.shape and a.dtype == np.dtype(t.dtype)
            and a.flags.c_contiguous for a, t in zip(arrays, infos))
        if not ok:
            got = [(tuple(a.shape), str(a.dtype)) if isinstance(a, np.ndarray) else type(a).__name__ for a in arrays]
            raise NpuflowError("NPF_RUNTIME_BAD_BUFFERS", runner=self.name, expected=len(infos), kind=kind,
                               shapes=[(t.shape, t.dtype) for t in infos], got=got)

    def execute_async(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> int:
        """Submit one job; returns its id (raises :class:`NpuflowError` on bad buffers)."""
        self._check(inputs, self._inputs, "input")
        self._check(outputs, self._outputs, "output")
        feeds = {t.name: a for t, a in zip(self._inputs, inputs)}

        def job() -> int:
            result = self._session._run_subgraph(self.index, feeds)
            for t, out in zip(self._outputs, outputs):
                np.copyto(out, result[t.name])
            return 0

        with self._lock:
            job_id = next(self._ids)
            self._jobs[job_id] = _pool().submit(job)
        return job_id

    def wait(self, job_id: int, timeout: float = -1) -> int:
        """Block until job ``job_id`` is done; 0 on success (errors are raised)."""
        with self._lock:
            fut = self._jobs.pop(job_id, None)
        if fut is None:
            raise NpuflowError("NPF_RUNTIME_UNKNOWN_JOB", runner=self.name, job_id=job_id)
        return fut.result(None if timeout is None or timeout < 0 else timeout)
