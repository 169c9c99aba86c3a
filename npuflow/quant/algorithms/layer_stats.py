"""A layer problem's sufficient statistics: what GPTQ needs of its columns, summed over the samples.

GPTQ's refit, its rounding and the error it is scored by (:mod:`.gptq`) read a layer's columns only
through ``X X^T``, ``Y X^T`` and ``sum Y^2`` (``X``: the quantized model's input patches with a row of
ones for the bias, ``Y``: the float layer's outputs): ``|A X - Y|^2 = A X X^T A^T - 2 A (Y X^T)^T +
sum Y^2`` for the written weights and bias ``A``.  Summed one calibration sample at a time, they take
``(K + 1)^2`` numbers per group whatever the column count, where the columns themselves grow with it:
EfficientNet-Lite0's 2,048 sampled columns per layer, held for all 50 layers, took 5.4 GiB and 4,096 or
8,192 were killed for memory (issue 18, session 36), while its Hessian ``K`` x ``K`` (``K`` up to
1,152) is estimated best from every position (GPTQ's paper uses all of them).  GPTQ's held-out
dampening choice solves on the first half of the columns and scores on the second, so the two
halves' sums are kept apart (:attr:`LayerStats.parts`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable

import numpy as np
import onnx

from .layer_problem import LayerProblem, forward
from .layers import layer_bias
from .patches import grouped_weight
from .qdq_weights import QuantizedLayer, code_limits, read_bias, read_codes, scale_rows

if TYPE_CHECKING:
    from .fast_finetune import LayerJob, QuantizedInputs


@dataclass
class ColumnStats:
    """Sums over ``m`` columns: ``xx`` (g, K+1, K+1) of ``x x^T``, ``yx`` (g, o, K+1) of ``y x^T``
    (``x`` with its row of ones last), ``yy`` of ``y^2``; float64 from float32 columns, as GPTQ
    computed them from the columns."""

    xx: np.ndarray
    yx: np.ndarray
    yy: float
    m: int

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> ColumnStats:
        """The sums of columns ``x`` (g, K, m) and ``y`` (g, o, m)."""
        xa = np.concatenate([x.astype(np.float64), np.ones((x.shape[0], 1, x.shape[2]))], axis=1)
        y64 = y.astype(np.float64)
        return cls(np.matmul(xa, xa.transpose(0, 2, 1)), np.matmul(y64, xa.transpose(0, 2, 1)),
                   float(np.sum(y64 * y64)), x.shape[2])

    def __add__(self, other: ColumnStats) -> ColumnStats:
        return ColumnStats(self.xx + other.xx, self.yx + other.yx, self.yy + other.yy, self.m + other.m)

    def __iadd__(self, other: ColumnStats) -> ColumnStats:
        self.xx += other.xx
        self.yx += other.yx
        self.yy += other.yy
        self.m += other.m
        return self

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Everything the sums hold, for a cache key."""
        return self.xx, self.yx, np.array([self.yy, self.m], np.float64)


def streamed(chunks: Iterable[tuple[np.ndarray, np.ndarray]], half: int) -> tuple[ColumnStats, ColumnStats]:
    """``(first, second)``: the sums of the columns before column ``half`` and from it on, of
    ``(x, y)`` column chunks taken in order (one per calibration sample); one chunk's columns at a
    time are ever held."""
    parts: list[ColumnStats | None] = [None, None]
    seen = 0
    for x, y in chunks:
        cut = min(max(half - seen, 0), x.shape[2])
        for i, (a, b) in enumerate(((0, cut), (cut, x.shape[2]))):
            if b > a or parts[i] is None:   # the first chunk sets both halves' shapes
                s = ColumnStats.of(x[:, :, a:b], y[:, :, a:b])
                if parts[i] is None:
                    parts[i] = s
                else:
                    parts[i] += s
        seen += x.shape[2]
    if parts[0] is None or parts[1] is None:
        raise ValueError("streamed: no columns")
    return parts[0], parts[1]


@dataclass
class LayerStats:
    """:class:`.layer_problem.LayerProblem` with its columns replaced by their sums (``parts``: the
    first half's and the second half's, or one part for a half already taken); ``w``, ``s``, ``b``,
    limits, tie rule and ``has_bias`` as there."""

    w: np.ndarray          # (g, o, K) float weights
    s: np.ndarray          # (g, o, 1) weight scale per row
    b: np.ndarray          # (g, o, 1) bias
    parts: tuple[ColumnStats, ...]
    qmin: int
    qmax: int
    round_mode: str
    has_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("w", "s", "b"):   # as LayerProblem's: the same bytes in a cache key
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))

    @classmethod
    def of(cls, p: LayerProblem) -> LayerStats:
        """The sums of ``p``'s columns, halves split at column ``m // 2`` (the first half of its
        calibration samples)."""
        half = p.x.shape[2] // 2
        parts = (ColumnStats.of(p.x[:, :, :half], p.y[:, :, :half]), ColumnStats.of(p.x[:, :, half:], p.y[:, :, half:]))
        return cls(p.w, p.s, p.b, parts, p.qmin, p.qmax, p.round_mode, p.has_bias)

    @property
    def total(self) -> ColumnStats:
        out = self.parts[0]
        for part in self.parts[1:]:
            out = out + part
        return out

    @property
    def m(self) -> int:
        return sum(part.m for part in self.parts)

    def part(self, i: int) -> LayerStats:
        """The problem on the columns of part ``i`` alone."""
        return replace(self, parts=(self.parts[i],))

    def error(self, codes: np.ndarray, bias: np.ndarray | None = None, scale: np.ndarray | None = None) -> float:
        """:meth:`.layer_problem.LayerProblem.error` (mean squared error of the layer's outputs over
        its columns) from the sums."""
        c = self.total
        b = self.b if bias is None else bias
        s = self.s if scale is None else scale
        a = np.concatenate([(codes * s).astype(np.float32), np.asarray(b, np.float32)], axis=2).astype(np.float64)
        sq = np.einsum("gon,gnp,gop->", a, c.xx, a, optimize=True) - 2.0 * np.sum(a * c.yx) + c.yy
        return float(max(sq, 0.0) / (a.shape[0] * a.shape[1] * c.m))

    def key_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays that decide the problem, for a cache key."""
        return (self.w, self.s, self.b) + tuple(a for part in self.parts for a in part.arrays())


def layer_stats(float_model: onnx.ModelProto, job: LayerJob, inputs: QuantizedInputs, float_inputs: QuantizedInputs,
                round_mode: str, linear: tuple[QuantizedLayer, np.ndarray | None]) -> LayerStats:
    """:func:`.fast_finetune.layer_problem`'s problem as the sums of its columns, one calibration
    sample's columns at a time: the same positions of the quantized and of the float model's layer
    inputs (``float_inputs``), so the sums are those of the problem's columns.  ``linear``: the
    layer and its float bias as :func:`.fast_finetune._with_linear_bias` gives them."""
    w, g, sampler = job.w, job.sampler.groups, job.sampler
    ql, linear_bias_value = linear
    full, floats = inputs.get(ql.node.input[0]), float_inputs.get(job.fl.node.input[0])
    wg = grouped_weight(w, g).astype(np.float32)
    fb = (layer_bias(float_model, job.fl, w.shape[0]) if linear_bias_value is None else linear_bias_value)
    chunks = ((sampler.sample(q, k), (forward(wg, sampler.sample(f, k)) + fb.reshape(g, -1, 1)).astype(np.float32))
              for k, (q, f) in enumerate(zip(full, floats)))
    parts = streamed(chunks, sum(sampler.count(q.shape) for q in full) // 2)
    s = grouped_weight(scale_rows(ql, w.shape) * np.ones_like(w), g)[:, :, :1]
    lo, hi = code_limits(ql, read_codes(inputs.model, ql))
    return LayerStats(wg, s, read_bias(inputs.model, ql, w.shape[0]).reshape(g, -1, 1), parts, lo, hi, round_mode,
                      has_bias=ql.bias_name is not None)
