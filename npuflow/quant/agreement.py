"""Agreement of a candidate model's outputs with the float model's, without labels: each output read
the way its task reads it (:mod:`.output_kinds`).  One measure for the QAT guard
(:mod:`npuflow.torch.qat_guard`) and the fast-finetune restarts
(:mod:`npuflow.quant.algorithms.restarts`), so that both judge a candidate alike; plain numpy, so
that quantization needs no torch for it.

What an output is, is found once from the FP32 reference (:class:`Reference`): a recogniser's
``(N, T, C)`` probability rows are read as greedy CTC lines, class or probability rows by their
argmax per row, anything else by its mean output cosine.  :meth:`Reference.compare` then scores a
candidate per output, with the output's mean cosine beside the score.

The two callers differ in three details; each is a parameter or a function of its own, so that neither caller's result
changes:

* ``by_line``: whether a recogniser's lines decide.  The guard lets them decide only on a large
  guard (one line is a coarse step on a few dozen), restarts always do.
* ``cosine_floor``: the guard divides by at least ``1e-12`` (an all-zero output has cosine 0),
  restarts (and :mod:`.sensitivity`) count two all-zero outputs as equal (:func:`cosine`).
* the cosine reported beside the score: the guard's is the per-sample cosine of all outputs
  flattened together (:func:`joint_cosine`), restarts' the mean of the per-output cosines (their
  tie-break).

Which outputs count as class rows is the same for both: :func:`.is_class_axis` of the output as it
is.  (Restarts once read every output of two or more axes by its argmax over the last axis, a
detector's ``(1, 84, 8400)`` by the anchor each channel row peaks at, which no task reads.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .output_kinds import ctc_greedy_sequences, is_class_axis, is_sequence_output

#: the measures an output is scored by
SEQUENCE, CLASS, PLAIN = "sequence agreement", "argmax agreement", "output cosine"

#: per sample, the graph outputs in order
Outputs = Sequence[Sequence[np.ndarray]]


@dataclass(frozen=True)
class OutputKind:
    """What one output is, found from the FP32 reference."""

    sequence: bool  # a recogniser's (N, T, C) probability rows: its greedy CTC lines are compared
    classes: bool  # its last axis is a class axis: its argmax rows are compared
    measure: str  # what scores it: SEQUENCE, CLASS or PLAIN


@dataclass(frozen=True)
class OutputAgreement:
    """How one output of a candidate agrees with FP32 on the samples."""

    kind: OutputKind
    score: float  # by kind.measure, higher is better
    cosine: float | None  # mean per-sample cosine of this output to FP32; None: not asked for (compare)
    rows: np.ndarray | None  # per class row, samples in order: argmax equal to FP32's; None: no class rows
    lines: list[bool] | None  # per sample: greedy CTC reading equal to FP32's; None: not a sequence output

    @property
    def counted(self) -> int:
        """How many rows the score counts (one row changes it by ``1 / counted``); 0 for a cosine."""
        if self.kind.measure == SEQUENCE:
            return len(self.lines or [])
        if self.kind.measure == CLASS:
            return max(len(self.rows if self.rows is not None else []), 1)
        return 0


def output_kind(fp32: Sequence[np.ndarray], by_line: bool = True) -> OutputKind:
    """What one output is, from its FP32 values on every sample (parameters: module docstring)."""
    values = [np.asarray(v) for v in fp32]
    sequence = classes = False
    if values[0].ndim >= 2:
        sequence = values[0].ndim == 3 and is_sequence_output(np.concatenate(values))
        classes = is_class_axis(np.concatenate(values))
    return OutputKind(sequence, classes, SEQUENCE if sequence and by_line else CLASS if classes else PLAIN)


class Reference:
    """The FP32 outputs on the samples, what each output is, and the recogniser lines FP32 reads,
    found once; :meth:`compare` scores candidates against them."""

    def __init__(self, fp32: Outputs, by_line: bool = True, cosine_floor: float | None = None) -> None:
        self.fp32 = [list(sample) for sample in fp32]
        self.kinds = [output_kind([s[k] for s in self.fp32], by_line) for k in range(len(self.fp32[0]))]
        self.cosine_floor = cosine_floor
        self._lines = {k: [ctc_greedy_sequences(s[k]) for s in self.fp32]
                       for k, kind in enumerate(self.kinds) if kind.sequence}

    def compare(self, outputs: Outputs, cosines: bool = True) -> list[OutputAgreement]:
        """Per output, how ``outputs`` (per sample, the candidate's outputs in order) agree with FP32.
        ``cosines`` False: an output's cosine only where it is the score (on a recogniser's
        probabilities it costs as much as the rest of the comparison)."""
        result = []
        for k, kind in enumerate(self.kinds):
            pairs = [(got[k], want[k]) for got, want in zip(outputs, self.fp32)]
            cos = float(np.mean([cosine(g, t, self.cosine_floor) for g, t in pairs])) \
                if cosines or kind.measure == PLAIN else None
            rows = np.concatenate([(np.asarray(g).argmax(-1) == np.asarray(t).argmax(-1)).ravel()
                                   for g, t in pairs]) if kind.classes else None
            lines = [ctc_greedy_sequences(got[k]) == want for got, want in zip(outputs, self._lines[k])] \
                if kind.sequence else None
            if lines is not None and kind.measure == SEQUENCE:
                score = float(np.mean(lines))
            elif rows is not None and kind.measure == CLASS:
                score = float(rows.mean())
            else:  # PLAIN: the cosine was computed
                score = float(cos)  # type: ignore[arg-type]
            result.append(OutputAgreement(kind, score, cos, rows, lines))
        return result


def cosine(a: np.ndarray, b: np.ndarray, floor: float | None = None) -> float:
    """Cosine of two arrays flattened, in float64.  ``floor`` None: where the norms' product is not
    positive (an all-zero side, norms that underflow, or a NaN or infinite value that makes it NaN),
    equal arrays count 1 (two all-zero outputs agree) and anything else 0, so that a broken
    candidate scores lowest instead of a NaN that compares false with every score; a number: the
    denominator is at least ``floor`` (0 for any all-zero side)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    den = float(np.linalg.norm(x) * np.linalg.norm(y))
    if floor is not None:
        return float(np.dot(x, y) / max(den, floor))
    if not den > 0.0:
        return float(np.array_equal(x, y))
    return float(np.dot(x, y) / den)


def joint_cosine(outputs: Outputs, reference: Outputs, floor: float | None = None) -> float:
    """Mean per-sample cosine of all outputs of a sample flattened together (a large-valued output
    weighs more in it than in the mean of per-output cosines)."""
    def joined(sample: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in sample])
    return float(np.mean([cosine(joined(g), joined(t), floor) for g, t in zip(outputs, reference)]))
