"""The one progress display of every command: ``progress(stage, done, total)``.

The library reports progress as ``progress(stage, done, total)`` calls (:mod:`npuflow.quant`,
:mod:`npuflow.scaleout`, :func:`npuflow.build.build`): ``done`` of ``total`` items of the stage,
``total`` ``None`` when the stage has no count.  :class:`StageProgress` shows them

- on a terminal as a Rich bar, a fresh one per stage (a stage without a count spins), and
- when the output is piped or logged (CI, ``| tee``, files) as one line per finished stage on
  stderr with its count and time, ``quantize: calibrate 12/12 samples 4.1 s``, plus a line every
  :data:`HEARTBEAT_S` seconds in a long stage, counted or not (a ticker thread: float optimisation,
  bias correction and the accuracy check report no counts, and SLANet's ran for minutes without a
  line), so that a log never stays silent for minutes, and
  a line per named item (``analyze: sensitivity 3/40 layers 12.1 s /conv3``: layers take seconds
  each; samples have no name and are only counted).

A stage's bar is a new Rich task: Rich's ``update(total=None)`` means "keep the total", so one
reused task kept the previous stage's ``12`` and showed ``0/12`` for every later stage.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

#: What a stage counts, for the piped lines ("12/12 samples").
UNITS = {"calibrate": "samples", "frames": "frames", "sensitivity": "layers", "mixed precision": "evaluations",
         "analyse": "groups", "subnets": "subnets"}
#: Seconds after which a long stage prints its count again when piped.
HEARTBEAT_S = 10.0


class _Count(MofNCompleteColumn):
    """``done/total``, and nothing for a stage without a count (Rich would print ``0/?``)."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.total is not None else Text("")


class StageProgress:
    """``with StageProgress("quantize", console, err_console) as progress: ... progress(stage, done, total)``.

    ``prefix`` names the command in the piped lines; :meth:`advance` counts one more item of the
    current stage (bench's frames, counted from several threads: calls hold a lock)."""

    def __init__(self, prefix: str, console: Console, err_console: Console) -> None:
        self.prefix = prefix
        self._err = err_console
        self._bar: Progress | None = None
        if console.is_terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), _Count(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self._task: TaskID | None = None
        self._stage: str | None = None
        self._done = 0
        self._total: int | None = None
        self._start = self._shown = time.monotonic()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> "StageProgress":
        if self._bar is not None:
            self._bar.__enter__()
        else:
            self._ticker = threading.Thread(target=self._tick, name="npuflow-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if exc_type is None:
            self._finish()
        if self._bar is not None:
            self._bar.__exit__(exc_type, *exc)

    def _tick(self) -> None:
        """The piped heartbeat: the running stage's line again once :data:`HEARTBEAT_S` seconds
        passed without one (a terminal's bar shows the elapsed time itself)."""
        while not self._stop.wait(min(1.0, HEARTBEAT_S / 4)):
            with self._lock:
                if self._stage is not None and time.monotonic() - self._shown >= HEARTBEAT_S:
                    self._line("...")

    def __call__(self, stage: str, done: int = 0, total: int | None = None, detail: str = "") -> None:
        """Stage ``stage`` has done ``done`` of ``total`` items (``detail``: the item, shown on the bar)."""
        with self._lock:
            self._report(stage, done, total, detail)

    def _report(self, stage: str, done: int, total: int | None, detail: str) -> None:
        if stage != self._stage:
            self._finish()
            self._stage, self._start = stage, time.monotonic()
            self._shown = self._start
            if self._bar is not None:
                if self._task is not None:
                    self._bar.remove_task(self._task)
                self._task = self._bar.add_task(stage, total=total)
        self._done, self._total = done, total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total,
                             description=f"{stage}: {detail}" if detail else stage)
        elif detail and done:
            self._line(detail)

    def advance(self, count: int = 1, detail: str = "") -> None:
        """``count`` more items of the current stage (``detail``: the last one, shown on the bar)."""
        with self._lock:
            if self._stage is not None:
                self._report(self._stage, self._done + count, self._total, detail)

    def _finish(self) -> None:
        """The finished stage's line (piped), or its line above the bar (terminal)."""
        if self._stage is not None:
            self._line("")
            self._stage = None

    def _line(self, tail: str) -> None:
        self._shown = time.monotonic()
        count = ""
        if self._total or self._done:
            unit = next((u for key, u in UNITS.items() if self._stage and self._stage.endswith(key)), "")
            count = f" {self._done}/{self._total if self._total else '?'}" + (f" {unit}" if unit else "")
        text = f"{self.prefix}: {self._stage}{count} {self._shown - self._start:.1f} s{(' ' + tail) if tail else ''}"
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, style="dim")
        else:
            self._err.print(text, markup=False, highlight=False)
