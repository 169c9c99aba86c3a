"""How often the float values ``npuflow compare`` feeds lie past each quantize step's range (interior clipping).

A run-time check sees only the inputs (:mod:`npuflow.runtime.coverage`); a sample wider than the
calibration set can clip deep inside the model instead.  DLinear on DPUCZDX8G (round 27): the
held-out series fit the input's power-of-two range (-8..7.94), but the moving average's output
``/Transpose_1_output_0_q`` (-4..3.97) did not, and held-out cosine fell to 0.943 while quantize
had reported 0.99996.  Checking every tensor on every run costs a pass over each; ``compare``
already computes every float tensor of its samples, so it counts here, per quantize step, the
reference values outside the step's range (``numerics.saturation_bounds``), as rknn's
``accuracy_analysis`` reports per layer, and warns with the worst steps
(``NPF_COMPARE_SATURATED``).  The calibration set itself clips a little by design (a percentile
or a power-of-two position search trades the tails for resolution), hence a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import NpuflowError
from ..numerics import saturation_bounds

#: compare warns where a step clips more than this fraction of its values ... (the calibration sets' own
#: clipping by a percentile or a power-of-two position search stays below it: at most 0.39 % on round 27's
#: 13 models x 3 targets; DLinear D's held-out series 0.72 % at ``/Transpose_1_output_0_q``)
WARN_FRACTION = 0.005
#: ... and the clip takes more than this of the tensor's magnitude (:attr:`StepSaturation.clip_error`:
#: DLinear D's held-out series 4.5 %; CoAtNet's SE gate on cpu-int8, 2.6 % of its values a hair past, 0.9 %)
WARN_CLIP_ERROR = 0.01
#: how many steps the warning names
WORST = 3


@dataclass
class StepSaturation:
    """One quantize step: its representable range and what the compared samples' float values did there."""

    tensor: str  # the float model's tensor
    step: str  # the quantized model's (or .npuf's) tensor on the step's grid
    low: float
    high: float
    seen_min: float = math.inf
    seen_max: float = -math.inf
    outside: int = 0
    total: int = 0
    #: sum of squares of what the clip takes off the values (``x - clip(x)``), and of the values
    clipped_sq: float = 0.0
    ref_sq: float = 0.0

    @property
    def fraction(self) -> float:
        return self.outside / self.total if self.total else 0.0

    @property
    def clip_error(self) -> float:
        """The relative error the clip alone puts on the tensor, ``|x - clip(x)| / |x|`` pooled over the
        samples: a few values one step past the range cost nothing, DLinear's moving average 1.4 past costs."""
        return math.sqrt(self.clipped_sq / self.ref_sq) if self.ref_sq else 0.0

    def add(self, ref: np.ndarray) -> None:
        """Count one sample's float values past the range (non-finite values left out)."""
        a = np.asarray(ref)
        if a.dtype.kind != "f" or not a.size:
            return
        a = a[np.isfinite(a)] if not np.isfinite(a).all() else a
        if not a.size:
            return
        lo, hi = float(a.min()), float(a.max())
        self.seen_min, self.seen_max = min(self.seen_min, lo), max(self.seen_max, hi)
        if lo < self.low or hi > self.high:
            self.outside += int(np.count_nonzero((a < self.low) | (a > self.high)))
            off = a - np.clip(a, self.low, self.high)
            self.clipped_sq += float(np.dot(off.ravel(), off.ravel()))
        flat = a.ravel().astype(np.float64)
        self.ref_sq += float(np.dot(flat, flat))
        self.total += a.size

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "step": self.step, "low": self.low, "high": self.high,
                "seen_min": self.seen_min, "seen_max": self.seen_max, "outside": self.outside, "total": self.total,
                "fraction": round(self.fraction, 6), "clip_error": round(self.clip_error, 6)}


def counters(steps: Mapping[str, tuple[str, Mapping]]) -> dict[str, StepSaturation]:
    """Float tensor -> its counter, from ``{float tensor: (step tensor, quant params)}``; ``quant`` as a
    manifest writes it (``dtype``, ``scale``, ``zero_point``, ``axis``); per-channel steps are skipped."""
    out: dict[str, StepSaturation] = {}
    for tensor, (step, q) in steps.items():
        scale, zp = np.reshape(q["scale"], -1), np.reshape(q["zero_point"], -1)
        if q.get("axis") is not None or scale.size != 1 or str(q["dtype"]) not in ("int8", "uint8", "int16", "uint16"):
            continue
        low, high = saturation_bounds(float(scale[0]), int(zp[0]), str(q["dtype"]))
        out[tensor] = StepSaturation(tensor, step, low, high)
    return out


def add_sample(steps: Mapping[str, StepSaturation], values: Mapping[str, np.ndarray]) -> None:
    """Count one sample's float tensors (those ``values`` holds) at their steps."""
    for tensor, s in steps.items():
        if tensor in values:
            s.add(values[tensor])


def worst(steps: Iterable[StepSaturation], count: int = WORST) -> list[StepSaturation]:
    """The ``count`` steps whose clip costs the most (:attr:`StepSaturation.clip_error`), those clipping none
    left out."""
    return sorted((s for s in steps if s.outside), key=lambda s: (-s.clip_error, -s.fraction, s.tensor))[:count]


def saturation_warning(steps: Iterable[StepSaturation], samples: int) -> NpuflowError | None:
    """``NPF_COMPARE_SATURATED`` naming the worst steps that clip more than :data:`WARN_FRACTION` of their
    values and :data:`WARN_CLIP_ERROR` of their magnitude, else None."""
    top = worst([s for s in steps if s.fraction > WARN_FRACTION and s.clip_error > WARN_CLIP_ERROR])
    if not top:
        return None
    nodes = "; ".join(f"{s.step!r} {100 * s.fraction:.2f} % ({s.outside} of {s.total}, clip error "
                      f"{100 * s.clip_error:.1f} %), range {s.low:.4g}..{s.high:.4g}, seen "
                      f"{s.seen_min:.4g}..{s.seen_max:.4g}" for s in top)
    return NpuflowError("NPF_COMPARE_SATURATED", count=len(top), samples=samples,
                        limit=f"{100 * WARN_FRACTION:g} %", error=f"{100 * WARN_CLIP_ERROR:g} %", nodes=nodes)
