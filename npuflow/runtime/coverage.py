"""Counts the input values a compiled model's first quantize step clips (calibration coverage at run time).

quantize measures similarity on its calibration samples; inputs wider than those samples are
clipped at the graph input's quantize step, and accuracy drops with no error (round 27: DLinear's
held-out series reached -5.77..5.60 against a calibrated -4.71..4.80, held-out cosine 0.943 while
quantize reported 0.99996).  A checked run costs one ``min``/``max`` per quantized float input
(about 4.5 µs a frame on the MNIST CNN, whose whole frame is about 65 µs on cpu-int8); the values
are counted only when one of them lies outside the range.  The first :data:`EVERY_RUN` runs are
all checked, then one run in :data:`SAMPLE_EVERY`: a deployment whose inputs drift outside the
calibrated range is still told within a few runs, and a long-running session's small frames do not
pay the check each time.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import NpuflowError
from ..numerics import saturation_bounds


#: how many runs of a session are all checked before the check samples one run in :data:`SAMPLE_EVERY`
EVERY_RUN = 1024
SAMPLE_EVERY = 16


class InputSaturationWarning(RuntimeWarning):
    """Issued once per session and input, at the first run whose values the input's quantize step clips."""


@dataclass
class InputCoverage:
    """What the checked runs so far fed one input, against the range its quantize step represents
    (``runs``: the runs checked, every one of the first :data:`EVERY_RUN`, then one in :data:`SAMPLE_EVERY`)."""

    name: str
    low: float
    high: float
    seen_min: float = float("inf")
    seen_max: float = float("-inf")
    outside: int = 0
    total: int = 0
    runs: int = 0

    def warning(self) -> NpuflowError | None:
        """``NPF_RUNTIME_INPUT_SATURATED`` when any value was clipped, else None."""
        if not self.outside:
            return None
        return NpuflowError("NPF_RUNTIME_INPUT_SATURATED", name=self.name, outside=self.outside, total=self.total,
                            runs=self.runs, fraction=f"{100 * self.outside / self.total:.2f} %",
                            calibrated=f"{self.low:.4g}..{self.high:.4g}",
                            seen=f"{self.seen_min:.4g}..{self.seen_max:.4g}")


class CoverageCounter:
    """Per quantized float graph input of a manifest (``inputs[i]["quant"]`` and ``["clipped_by"]``), the
    values its runs clip."""

    def __init__(self, inputs: Sequence[Mapping]) -> None:
        self._inputs: dict[str, InputCoverage] = {}
        for t in inputs:
            # the input's own quantize step and those it reaches through ops that keep its values
            # (``clipped_by``, format 1.3 / 2.1: DLinear's Slice / Expand / Tile / Concat on the CPU first)
            steps = [q for q in [t.get("quant"), *(c["quant"] for c in t.get("clipped_by") or ())]
                     if q is not None and q.get("axis") is None]
            if not steps or not np.issubdtype(np.dtype(t["dtype"]), np.floating):
                continue
            bounds = [saturation_bounds(float(np.reshape(q["scale"], -1)[0]), int(np.reshape(q["zero_point"], -1)[0]), q["dtype"])
                      for q in steps]
            # a value is lost where any of its steps clips it: the narrowest range of them all
            low, high = max(b[0] for b in bounds), min(b[1] for b in bounds)
            self._inputs[t["name"]] = InputCoverage(t["name"], low, high)
        self._lock = threading.Lock()
        #: runs seen, checked or not (a racy count is harmless: it only picks which runs are checked)
        self._calls = 0

    def __bool__(self) -> bool:
        return bool(self._inputs)

    def observe(self, feeds: object) -> None:
        """Count ``feeds``' values outside each input's range (on a checked run: see the module docstring); a
        feed that is not a float array of a counted input is left to the session's own checks."""
        self._calls += 1
        if self._calls > EVERY_RUN and self._calls % SAMPLE_EVERY:
            return
        if type(feeds) is not dict and not isinstance(feeds, Mapping):
            return
        for name, cov in self._inputs.items():
            a = feeds.get(name)
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or not a.size:
                continue
            lo, hi = a.min(), a.max()
            outside = int(np.count_nonzero((a < cov.low) | (a > cov.high))) if lo < cov.low or hi > cov.high else 0
            with self._lock:
                first = outside and not cov.outside
                if lo < cov.seen_min:
                    cov.seen_min = float(lo)
                if hi > cov.seen_max:
                    cov.seen_max = float(hi)
                cov.outside += outside
                cov.total += a.size
                cov.runs += 1
                warning = cov.warning() if first else None
            if warning is not None:
                warnings.warn(f"npuflow runtime: WARNING [{warning.code}] {warning.message} (this run; "
                              f"Session.input_coverage() counts the runs checked)\n  hint: {warning.hint}",
                              InputSaturationWarning, stacklevel=3)

    def report(self) -> list[InputCoverage]:
        """A copy of every counted input's figures."""
        with self._lock:
            return [InputCoverage(**vars(c)) for c in self._inputs.values()]
