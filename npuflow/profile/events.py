"""Subgraph run events: what the runtime reports each time one subgraph of a model runs.

The runtime's ``Session.add_listener(fn)`` calls ``fn`` once per subgraph run; :func:`from_runtime`
turns that event into a :class:`RunEvent`, and :class:`Recorder` collects events from any number
of threads (a list append under a lock: cheap enough not to disturb the timings).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..placement import Device


@dataclass(frozen=True)
class RunEvent:
    """One subgraph run: ``start_ns``/``end_ns`` are ``time.perf_counter_ns`` values."""

    name: str
    device: Device
    thread_id: int
    start_ns: int
    end_ns: int
    subgraph: int | str | None = None

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _first(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return default


def from_runtime(e: Any) -> RunEvent:
    """Adapt a runtime listener event (attribute names as documented by ``npuflow.runtime``)."""
    sub = _first(e, "subgraph_id", "subgraph", "index")
    device = str(_first(e, "device", default=Device.NPU))
    return RunEvent(
        name=str(_first(e, "name", default=f"subgraph_{sub}")),
        device=Device.CPU if device.upper().startswith(Device.CPU) else Device.NPU,
        thread_id=int(_first(e, "thread_id", "thread", default=threading.get_ident())),
        start_ns=int(_first(e, "start_ns", "start")),
        end_ns=int(_first(e, "end_ns", "end")),
        subgraph=sub,
    )


class Recorder:
    """Thread-safe event sink; pass :meth:`listener` to ``Session.add_listener``."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self._lock = threading.Lock()

    def listener(self, event: Any) -> None:
        ev = event if isinstance(event, RunEvent) else from_runtime(event)
        with self._lock:
            self.events.append(ev)

    def add(self, event: RunEvent) -> None:
        with self._lock:
            self.events.append(event)

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def snapshot(self) -> list[RunEvent]:
        with self._lock:
            return list(self.events)
