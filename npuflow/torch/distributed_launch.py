"""Data-parallel processes for QAT: N local gloo processes (``npuflow qat --nproc N``), or the
processes a ``torchrun`` launch already started.

:func:`spawn` starts the processes with ``torch.multiprocessing`` (spawn start method), gives
them a process group on localhost (``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``), relays
rank 0's progress to the caller's bar and hands back rank 0's result.  It never hangs on a
failed worker: ``torch.multiprocessing`` terminates the other ranks as soon as one exits
non-zero, a worker's :class:`NpuflowError` comes back with its code, anything else (an
exception, a worker killed for memory) is ``NPF_SCALEOUT_WORKER_FAILED`` naming the rank, and
every collective call has the process group's timeout.

:func:`join_launched` joins the process group a ``torchrun`` launch describes in the
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); torchrun's own agent
stops the other ranks when one fails.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import signal
import socket
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

from ..errors import NpuflowError

ENGINE = "torch DDP"
#: Longest wait of one collective call (a gradient all-reduce, a broadcast) before it fails
#: instead of waiting for a rank that stopped answering; covers rank 0's PTQ under torchrun.
DEFAULT_TIMEOUT_MINUTES = 30.0
_POLL_S = 0.2

Report = Callable[..., None]


def launched() -> bool:
    """Whether this process is one rank of several that a launcher such as torchrun started."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_launched(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> tuple[int, int]:
    """``(rank, world size)``: of the process group already joined, else of the one a torchrun
    launch describes (joined here, gloo: QAT of an ONNX model trains on the CPU), else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not launched():
        return 0, 1
    dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size()


def free_port() -> int:
    """A TCP port nobody listens on now on localhost (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable[..., Any], nproc: int, args: tuple, progress: Report | None = None,
          timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Any:
    """Run ``fn(report, *args)`` in ``nproc`` processes of one gloo process group; return what
    rank 0's call returned (it must pickle).  ``report(*event)`` is ``progress`` on rank 0 (the
    events travel through a queue) and None on the other ranks.  ``fn`` is a module-level function."""
    channel = mp.get_context("spawn").Queue()
    with tempfile.TemporaryDirectory(prefix="npuflow-ddp-") as folder:
        # the arguments (a model, the samples: megabytes) go through a file: multiprocessing
        # writes each process's arguments into a pipe whose read end it keeps open itself until
        # the write ends, so a process that dies before reading more than the pipe's buffer
        # (an import error) would leave this process writing forever
        task = Path(folder) / "task.pickle"
        task.write_bytes(pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
        context = mp.start_processes(_entry, args=(nproc, free_port(), channel, str(task), timeout_minutes),
                                     nprocs=nproc, join=False, start_method="spawn")
        return _watch(context, channel, progress)


def _watch(context: Any, channel: Any, progress: Report | None) -> Any:
    """Relay progress until every rank has exited; rank 0's result, or the coded failure."""
    outcome: dict[str, Any] = {"errors": []}
    try:
        while True:
            _drain(channel, progress, outcome)
            try:
                if context.join(timeout=_POLL_S):
                    break
            except ProcessException as exc:
                _drain(channel, progress, outcome, wait=True)
                raise _failure(outcome["errors"], exc) from None
        _drain(channel, progress, outcome, wait=True)
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join()
    if "result" not in outcome:  # every rank exited 0 without a result: a programming error
        raise NpuflowError("NPF_SCALEOUT_WORKER_FAILED", engine=ENGINE, task="rank 0", reason="it returned nothing")
    return outcome["result"]


def _entry(rank: int, nproc: int, port: int, channel: Any, task: str, timeout_minutes: float) -> None:
    """One rank: join the process group, run the task, send rank 0's result or any rank's failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops the ranks
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nproc))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    try:
        fn, args = pickle.loads(Path(task).read_bytes())  # written by spawn() in a private folder
        dist.init_process_group("gloo", rank=rank, world_size=nproc, timeout=timedelta(minutes=timeout_minutes))
        report = (lambda *event: channel.put(("progress", event))) if rank == 0 else None
        result = fn(report, *args)
        if rank == 0:
            channel.put(("result", result))
    except NpuflowError as exc:
        channel.put(("error", rank, exc.code, exc.fields))
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001  (any failure goes to the parent as a coded error)
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        channel.put(("failed", rank, reason))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _drain(channel: Any, progress: Report | None, outcome: dict[str, Any], wait: bool = False) -> None:
    """Handle every message waiting in ``channel`` (``wait``: also those still in flight from
    processes that have exited, which their queue threads flushed before exiting)."""
    while True:
        try:
            message = channel.get(timeout=_POLL_S) if wait else channel.get_nowait()
        except queue_module.Empty:
            return
        kind = message[0]
        if kind == "progress":
            if progress is not None:
                progress(*message[1])
        elif kind == "result":
            outcome["result"] = message[1]
        else:
            outcome["errors"].append(message)


def _failure(errors: list[tuple], exc: ProcessException) -> NpuflowError:
    """The error to raise for a failed launch: a rank's own coded error first (the others then
    fail on the closed connection), else the first failure reported, else the exit status."""
    for message in errors:
        if message[0] == "error":
            return NpuflowError(message[2], **message[3])
    if errors:
        _, rank, reason = errors[0]
        return NpuflowError("NPF_SCALEOUT_WORKER_FAILED", engine=ENGINE, task=f"rank {rank}", reason=reason)
    if isinstance(exc, ProcessExitedException) and exc.signal_name:
        reason = f"killed by {exc.signal_name}"
    elif isinstance(exc, ProcessExitedException):
        reason = f"exited with status {exc.exit_code}"
    else:
        reason = str(exc).strip().splitlines()[-1]
    return NpuflowError("NPF_SCALEOUT_WORKER_FAILED", engine=ENGINE, task=f"rank {exc.error_index}", reason=reason)
