"""What a model output is, and how a task reads it: class or probability rows, a classifier head's
scores, a recogniser's per-step probabilities, and the greedy CTC reading of them.  Plain numpy
and the graph index, so the benchmarks and any stage read outputs the same way without importing
torch (the QAT guard decides with them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .. import operators
from ..graph import GraphView


def ctc_greedy_sequences(probs: np.ndarray) -> list[tuple[int, ...]]:
    """The class sequence a greedy CTC decoder reads from each of ``probs``' ``(T, C)`` rows: the
    argmax per step, repeats merged, the blank (class 0, PaddleOCR's and rapidocr's
    ``CTCLabelDecode`` convention) dropped.  One decoder for the guard and the benchmarks, so the
    sequence agreement the guard reports is the line reading the benchmarks score."""
    texts = []
    for row in np.asarray(probs).reshape(-1, *np.shape(probs)[-2:]).argmax(axis=-1):
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append(tuple(int(i) for i in row[keep]))
    return texts


def is_sequence_output(fp32: np.ndarray) -> bool:
    """Whether an output is a recogniser's ``(N, T, C)`` probability rows (a softmax per step)."""
    values = np.asarray(fp32, dtype=np.float64)
    return values.ndim == 3 and _probability_rows(values)


def is_class_axis(fp32: np.ndarray) -> bool:
    """Whether an output's last axis is a class or probability axis: rows that are non-negative
    and sum to 1 (a softmax in the model), or ``(N, C)`` logits."""
    values = np.asarray(fp32, dtype=np.float64)
    return (values.ndim >= 2 and _probability_rows(values)) or (values.ndim == 2 and values.shape[1] > 1)


def _probability_rows(values: np.ndarray) -> bool:
    """Whether the last axis holds more than one class and every row is non-negative and sums to 1."""
    return values.shape[-1] > 1 and bool((values >= 0).all()) and bool(np.allclose(values.sum(-1), 1.0, atol=1e-3))


def is_probability_rows(fp32: np.ndarray) -> bool:
    """Whether an output's last axis holds probability rows (a softmax in the model): what a task
    reads by its argmax, unlike ``(N, C)`` values of no known kind (box offsets, an embedding),
    whose argmax nothing reads."""
    values = np.asarray(fp32, dtype=np.float64)
    return values.ndim >= 2 and _probability_rows(values)


def class_head(view: GraphView, output: str) -> str | None:
    """The op type of the linear layer (:data:`~npuflow.operators.CLASS_HEAD_OPS`) whose scores
    ``output`` holds, followed back through bias adds, means and flattens only; None: another op
    computes it.  A classifier exported under torch's default name (BC-ResNet's ``345``: a 1x1 Conv
    and a mean) is read by its argmax like ``logits``; an L2-normalised embedding ends in a ``Div``
    or ``LpNormalization`` and a box or landmark head beside a softmax is left to the caller."""
    node = view.producer_node(output)
    while node is not None and node.op_type in operators.CLASS_HEAD_OPS["after"]:
        data = [t for t in node.input if view.const(t) is None] if node.op_type == "Add" else node.input[:1]
        if len(data) != 1:  # an Add of two computed tensors: a residual, no bias
            return None
        node = view.producer_node(data[0])
    if node is None or node.op_type not in operators.CLASS_HEAD_OPS["layer"]:
        return None
    if node.op_type == "Conv":
        weight = view.const(node.input[1]) if len(node.input) > 1 else None
        if weight is None or any(k != 1 for k in weight.shape[2:]):
            return None
    return node.op_type


#: The share of rows whose label did change raises the estimate only from this many rows on: one row
#: of 16 is weak evidence of a 5 % rate (two untrained corpus nets, cosine 0.997 and above on
#: B4096, changed one label of 16 on the check's samples; one of them none of 16 unseen ones).
MIN_CHANGED_ROWS = 2

#: How sure the bound on unseen near-ties (:attr:`LabelMargin.bound`) is: the share of rows below a
#: gap is taken at this upper quantile of what the check's rows allow.  High, because a check's few
#: calibration rows tend to be clean, confident inputs, and deployment's inputs are nearer ties.
NEAR_TIE_CONFIDENCE = 0.99

#: The bound reads the smallest this many gaps (the lower tail, where flips come from).
NEAR_TIE_ROWS = 8


@dataclass(frozen=True)
class LabelMargin:
    """How near the label an argmax (or a TopK's ``k``-th place) reads from some rows lies to
    changing under quantization, measured on the accuracy check's samples.

    Per row, the float model's gap ``g`` between its ``k``-th and ``k+1``-th largest values, and
    the change quantization made to that gap; ``error`` is the root mean square of those changes
    over the rows.  A row flips when its change exceeds its gap against it, so with the change
    taken as normal around 0 with that spread, a row flips with chance ``Phi(-g / error)``:
    ``estimated`` is the mean of that over the rows (at least ``changed`` where
    :data:`MIN_CHANGED_ROWS` or more rows did flip), what share of inputs like these would read
    another label, where ``changed`` counts only the rows that did flip.  The samples the ranges
    were set on may all lie far from the decision boundary (scikit-learn's GaussianNB on
    cpu-int8: no label changed on 8 calibration rows, 9.7 % on all 569); two rows nearer it than
    the error is large said so.

    A few rows may also show no row near the boundary where inputs like them often lie there (a
    barely trained classifier: the check's smallest gap a few times the error, while many unseen
    inputs sat within a fraction of it).  ``bound`` is what the rows cannot rule out: for each
    of the :data:`NEAR_TIE_ROWS` smallest gaps ``g_(j)``, the share of inputs with a gap below it is at
    most the :data:`NEAR_TIE_CONFIDENCE` quantile of ``Beta(j, n + 1 - j)`` (the order statistic's law);
    spread evenly over ``[0, g_(j)]`` that share flips with the mean of ``Phi(-g / error)`` there; the
    largest over ``j``.  It shrinks as rows are added or as the smallest gaps grow against the error."""

    rows: int  # rows with a float winner (ties in float decide nothing and are left out)
    changed: float  # share of them whose label the quantized model changed
    estimated: float  # the expected share of changed labels (class docstring)
    error: float  # root mean square change of the top-k gap
    near: int  # rows whose float gap is below ``error``
    bound: float = 0.0  # the share of changed labels the rows cannot rule out (class docstring)
    smallest: float = 0.0  # the smallest float gap of the rows
    #: rows read as sequences of ``steps`` rows each (a recogniser's ``(N, T, C)`` per-step classes, read
    #: by a CTC decoder step by step): a sequence changes where any of its steps' labels changes, so a
    #: share of changed steps (3.75 % on PP-OCRv6 rec, B4096) hides the share of changed lines (10 of 24)
    sequences: int = 0  # how many (0: rows read one by one)
    steps: int = 0
    sequences_changed: float = 0.0  # share of them with a changed step on the check's samples
    #: the expected share of changed sequences: per sequence ``1 - prod(1 - Phi(-g / error))`` over its
    #: steps, the mean (at least ``sequences_changed`` where MIN_CHANGED_ROWS or more changed)
    sequences_estimated: float = 0.0

    @property
    def worst(self) -> float:
        """The largest share of changed labels (or sequences) the margin expects or cannot rule out."""
        return max(self.estimated, self.bound, self.sequences_estimated)

    def to_json(self) -> dict:
        sequences = {"sequences": self.sequences, "steps": self.steps,
                     "sequences_changed": round(self.sequences_changed, 4),
                     "sequences_estimated": round(self.sequences_estimated, 4)} if self.sequences else {}
        return {"rows": self.rows, "changed": round(self.changed, 4), "estimated": round(self.estimated, 4),
                "bound": round(self.bound, 4),
                "smallest": float(f"{self.smallest:.6g}"), "error": float(f"{self.error:.6g}"), "near": self.near,
                **sequences}


def label_margin(fp32: np.ndarray, quantized: np.ndarray, k: int = 1, steps: int = 0) -> LabelMargin | None:
    """The :class:`LabelMargin` of rows along the last axis of ``fp32`` and ``quantized`` (same
    shape, larger values win; negate both for an ArgMin); None when no row has a float winner or
    the axis has no ``k+1``-th place.  ``steps``: each run of that many rows is one sequence
    (:attr:`LabelMargin.sequences`), judged as a whole as well."""
    f = np.asarray(fp32, dtype=np.float64).reshape(-1, np.shape(fp32)[-1])
    q = np.asarray(quantized, dtype=np.float64).reshape(f.shape)
    if f.shape[1] <= k:
        return None
    total = len(f)
    keep = np.isfinite(f).all(1) & np.isfinite(q).all(1)
    judged = np.flatnonzero(keep)  # each judged row's place among all rows (a sequence's steps)
    f, q = f[keep], q[keep]
    order = np.argsort(-f, axis=1, kind="stable")
    rows = np.arange(len(f))
    inside, outside = order[:, k - 1], order[:, k]
    gap = f[rows, inside] - f[rows, outside]
    decided = gap > 0
    if not decided.any():
        return None
    gap, f, q, inside, outside, rows = (gap[decided], f[decided], q[decided], inside[decided], outside[decided],
                                        np.arange(int(decided.sum())))
    judged = judged[decided]
    change = (q[rows, inside] - q[rows, outside]) - gap
    error = float(np.sqrt(np.mean(change * change)))
    flips = q.argmax(1) != f.argmax(1) if k == 1 else gap + change < 0
    flipped = int(np.count_nonzero(flips))
    changed = flipped / len(gap)
    chance = _normal_tail(gap / error) if error else np.zeros(len(gap))
    estimated = float(np.mean(chance))
    margin = LabelMargin(rows=len(gap), changed=changed, error=error, near=int(np.count_nonzero(gap < error)),
                         estimated=max(estimated, changed if flipped >= MIN_CHANGED_ROWS else 0.0),
                         bound=near_tie_bound(gap, error), smallest=float(gap.min()))
    if steps <= 1 or total % steps:
        return margin
    # per sequence: a row left out (a float tie, a non-finite value) neither changes nor may change
    step_chance, step_flip = np.zeros(total), np.zeros(total, dtype=bool)
    step_chance[judged], step_flip[judged] = chance, flips
    lines = step_flip.reshape(-1, steps).any(1)
    seq_estimated = float(np.mean(1.0 - np.prod(1.0 - step_chance.reshape(-1, steps), axis=1)))
    seq_changed = float(np.mean(lines))
    return replace(margin, sequences=len(lines), steps=steps, sequences_changed=seq_changed,
                   sequences_estimated=max(seq_estimated,
                                           seq_changed if np.count_nonzero(lines) >= MIN_CHANGED_ROWS else 0.0))


def near_tie_bound(gap: np.ndarray, error: float) -> float:
    """:attr:`LabelMargin.bound` of rows with float top-k gaps ``gap`` (all > 0) moved by ``error``
    (root mean square): the largest, over the smallest gaps ``g_(j)``, of the share of inputs below
    ``g_(j)`` the rows allow (at :data:`NEAR_TIE_CONFIDENCE`) times the mean flip chance of a gap
    spread evenly over ``[0, g_(j)]``."""
    if not error:
        return 0.0
    smallest = np.sort(np.asarray(gap, dtype=np.float64))[:NEAR_TIE_ROWS]
    return max(_order_statistic_quantile(j + 1, len(gap), NEAR_TIE_CONFIDENCE) * _mean_flip(g / error)
               for j, g in enumerate(smallest))


def _mean_flip(x: float) -> float:
    """The mean of ``P(Z > t)`` over ``t`` in ``[0, x]``: ``(x Q(x) - phi(x) + phi(0)) / x``."""
    density = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return float((x * _normal_tail(np.array(x)) - density + 1.0 / math.sqrt(2.0 * math.pi)) / x)


def _order_statistic_quantile(j: int, n: int, confidence: float) -> float:
    """The ``confidence`` quantile of the ``j``-th smallest of ``n`` uniform draws (``Beta(j, n + 1 - j)``):
    the ``p`` at which ``j`` or more of ``n`` rows fall below with chance ``confidence``, by bisection
    on the binomial distribution (npuflow has no scipy)."""
    def fewer(p: float) -> float:  # P(Binomial(n, p) < j)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                            + i * math.log(p) + (n - i) * math.log1p(-p)) for i in range(j))
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if fewer(mid) > 1.0 - confidence else (low, mid)
    return high


def _normal_tail(x: np.ndarray) -> np.ndarray:
    """``P(Z > x)`` for a standard normal ``Z`` and ``x >= 0``, vectorised (Abramowitz and Stegun
    7.1.26, absolute error below 1e-7: numpy has no erfc, and npuflow no scipy)."""
    z = np.asarray(x, dtype=np.float64) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return 0.5 * poly * np.exp(-z * z)


#: An output whose last (or NCHW channel) axis holds from 2 to this many channels is judged per
#: channel as well as whole (:func:`channel_axis`): afis' LEADER concatenates angle (+-pi), x, y
#: and a quality score read with ``>= 0.5``;
#: the angle dominates the whole output's cosine (0.965 on cpu-int8) while quality's is 0.02-0.30.
#: Wider last axes are features, anchors or classes, which no task reads one by one.
MAX_JUDGED_CHANNELS = 8

#: A channel is judged only where its float values spread (standard deviation) at least this share
#: of their root mean square: a near-constant channel (a bias, a padding flag) says nothing by its
#: cosine.
MIN_CHANNEL_SPREAD = 0.05

#: ... and where its root mean square is at least this share of the output's largest channel's: below
#: it a channel holds float32 rounding of the others only.  Small beside the others is no reason:
#: LEADER's quality channel is 1e-3 of its angle's (0.0017 against 1.77 on synthetic ridges), about
#: one step of the grid they share on cpu-int8, and that collapse is the loss to report.
MIN_CHANNEL_SHARE = 1e-5


def channel_axis(shape: Sequence[int]) -> int | None:
    """The axis of an output of ``shape`` whose channels are judged one by one: the last (NHWC,
    ``(N, C)``) or else the second of three or more (NCHW) where it holds 2 to
    :data:`MAX_JUDGED_CHANNELS`; None: neither."""
    def few(size: int) -> bool:
        return 2 <= size <= MAX_JUDGED_CHANNELS
    if len(shape) >= 2 and few(shape[-1]):
        return len(shape) - 1
    return 1 if len(shape) >= 3 and few(shape[1]) else None


@dataclass(frozen=True)
class ChannelSimilarity:
    """One channel (an index of the last axis) of an output: its cosine to the float model's
    values pooled over the check's samples, and whether its float values vary enough for the
    cosine to mean anything (:data:`MIN_CHANNEL_SPREAD`, :data:`MIN_CHANNEL_SHARE`)."""

    axis: int
    channel: int
    cosine: float
    rms: float  # the float values' root mean square
    spread: float  # the float values' standard deviation
    varies: bool

    def to_json(self) -> dict:
        return {"axis": self.axis, "channel": self.channel, "cosine": round(self.cosine, 6),
                "rms": float(f"{self.rms:.6g}"),
                "spread": float(f"{self.spread:.6g}"), "varies": self.varies}


class ChannelSums:
    """Per channel of one output (along ``axis``), the sums its :class:`ChannelSimilarity` is
    computed from, added sample by sample (entries finite in both models only, as the whole
    output's cosine)."""

    def __init__(self, axis: int, channels: int) -> None:
        self.axis = axis
        self.sums = np.zeros((channels, 5))  # dot, float square, quantized square, float sum, count

    def fits(self, shape: Sequence[int]) -> bool:
        """Whether an output of ``shape`` has this axis and channel count (a dynamic output may not)."""
        return channel_axis(shape) == self.axis and shape[self.axis] == self.sums.shape[0]

    def add(self, fp32: np.ndarray, quantized: np.ndarray) -> None:
        channels = self.sums.shape[0]
        f = np.moveaxis(np.asarray(fp32, dtype=np.float64), self.axis, -1).reshape(-1, channels)
        q = np.moveaxis(np.asarray(quantized, dtype=np.float64), self.axis, -1).reshape(f.shape)
        both = np.isfinite(f) & np.isfinite(q)
        f, q = np.where(both, f, 0.0), np.where(both, q, 0.0)
        self.sums += np.stack([(f * q).sum(0), (f * f).sum(0), (q * q).sum(0), f.sum(0), both.sum(0)], axis=1)

    def similarities(self) -> list[ChannelSimilarity]:
        dot, ff, qq, total, count = self.sums.T
        count = np.maximum(count, 1.0)
        rms = np.sqrt(ff / count)
        spread = np.sqrt(np.maximum(ff / count - (total / count) ** 2, 0.0))
        largest = float(rms.max(initial=0.0))
        result = []
        for c in range(len(rms)):
            den = math.sqrt(ff[c] * qq[c])
            cos = float(dot[c] / den) if den > 0 else float(ff[c] == qq[c])
            varies = bool(rms[c] > 0 and spread[c] >= MIN_CHANNEL_SPREAD * rms[c]
                          and rms[c] >= MIN_CHANNEL_SHARE * largest)
            result.append(ChannelSimilarity(self.axis, c, cos, float(rms[c]), float(spread[c]), varies))
        return result


#: An output of shape ``(N, C, L)`` with at most this many channels and ``L`` at least
#: :data:`SIGNAL_MIN_LENGTH` is a signal (:func:`is_signal`): a waveform frame (DTLN's 1 x 1 x 512),
#: a separator's sources (Conv-TasNet's 1 x 2 x L).
SIGNAL_MAX_CHANNELS = 2
SIGNAL_MIN_LENGTH = 256


def is_signal(shape: Sequence[int | str | None]) -> bool:
    """Whether an output of ``shape`` (the batch may be symbolic) is a 1-D signal, judged by its
    signal-to-noise ratio to the float model's as well as its cosine (:func:`snr_db`).  ``(N, L)`` is
    left out: an embedding."""
    return (len(shape) == 3 and isinstance(shape[1], int) and isinstance(shape[2], int)
            and shape[1] <= SIGNAL_MAX_CHANNELS and shape[2] >= SIGNAL_MIN_LENGTH)


def snr_db(signal_energy: float, noise_energy: float) -> float | None:
    """The float values' energy over the quantization error's, in dB, both summed over the samples
    (so a near-silent frame, whose own ratio is poor with an error of one output step, weighs what its
    energy weighs: DTLN stage 2's quiet frames read cosine 0.73 at an error of 0.009); None: no error."""
    if noise_energy <= 0.0:
        return None
    if signal_energy <= 0.0 or math.isinf(noise_energy):
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


#: An output of at most this many values per sample (DeepFM's click probability, a regressor's one
#: value) is judged over the samples, not sample by sample: the cosine of one value is +-1 (0 for a
#: zero) and said nothing while a held-out click probability went 0.956 -> 0.008 (round 25).
FEW_VALUES = 2

#: Such an output warns (``NPF_QUANT_OUTPUT_ERROR``) when its largest error on the accuracy check's
#: samples exceeds this share of its range (a sigmoid's [0, 1], else the float values' spread): about
#: 25 steps of an 8-bit grid over that range, well above the few steps a deep int8 network adds.
MAX_FEW_VALUE_ERROR = 0.1


def is_few_values(shape: Sequence[int]) -> bool:
    """Whether an output of ``shape`` (one sample's, batch first) holds at most :data:`FEW_VALUES`
    values per batch row: judged by :func:`few_value_error` over the samples, not by each row's cosine.  A
    1-D output counts whole (a ``(512,)`` embedding exported without its batch axis is one vector)."""
    return int(np.prod(shape[1:] if len(shape) >= 2 else shape, dtype=np.int64)) <= FEW_VALUES


def fixed_range(view: GraphView, output: str) -> tuple[float, float] | None:
    """The interval of the op that computes ``output`` whatever its input (``operators.FIXED_OUTPUT_RANGE``:
    a Sigmoid's [0, 1]), followed back through ops that only move values; None: another op computes it."""
    node = view.producer_node(output)
    while (node is not None and node.op_type not in operators.FIXED_OUTPUT_RANGE
           and node.op_type in operators.VALUE_MOVING_OPS and node.input):
        node = view.producer_node(node.input[0])
    return None if node is None else operators.FIXED_OUTPUT_RANGE.get(node.op_type)


@dataclass(frozen=True)
class FewValueError:
    """How far a few-value output (:func:`is_few_values`) moved over the accuracy check's samples:
    its largest absolute error, the range it is judged against, and whether that range is the op's
    own interval (a probability) rather than the float values' spread."""

    max_error: float
    low: float
    high: float
    fixed: bool

    @property
    def share(self) -> float:
        """The largest error as a share of the range (inf where the float values do not spread)."""
        return self.max_error / (self.high - self.low) if self.high > self.low else (math.inf if self.max_error else 0.0)

    def to_json(self) -> dict:
        return {"max_error": float(f"{self.max_error:.6g}"), "range": [self.low, self.high], "fixed_range": self.fixed,
                "share": float(f"{self.share:.6g}") if math.isfinite(self.share) else None}


def few_value_error(fp32: Sequence[np.ndarray], quantized: Sequence[np.ndarray],
                    interval: tuple[float, float] | None) -> FewValueError | None:
    """The :class:`FewValueError` of one output's float and quantized values on each sample (entries
    finite in both), against ``interval`` (:func:`fixed_range`) or else the float values' own spread;
    None: no finite value."""
    f = np.concatenate([np.asarray(a, np.float64).ravel() for a in fp32]) if fp32 else np.zeros(0)
    q = np.concatenate([np.asarray(b, np.float64).ravel() for b in quantized]) if quantized else np.zeros(0)
    if f.shape != q.shape:
        return None
    keep = np.isfinite(f) & np.isfinite(q)
    if not keep.any():
        return None
    f, q = f[keep], q[keep]
    low, high = interval if interval is not None else (float(f.min()), float(f.max()))
    return FewValueError(float(np.abs(q - f).max()), float(low), float(high), interval is not None)
