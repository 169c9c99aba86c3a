"""The label-free agreement measure the QAT guard and the fast-finetune restarts share
(``npuflow.quant.agreement``), on small arrays whose results are counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from npuflow.analyze import sensitivity
from npuflow.quant.agreement import CLASS, PLAIN, SEQUENCE, Reference, cosine, joint_cosine


def _steps(classes: list[int]) -> np.ndarray:
    """A recogniser's ``(1, T, 3)`` probability rows whose argmax per step is ``classes``."""
    p = np.full((1, len(classes), 3), 0.1, dtype=np.float32)
    p[0, np.arange(len(classes)), classes] = 0.8
    return p


def _logits(*values: float) -> np.ndarray:
    return np.array([values], dtype=np.float32)


# per sample: a CTC sequence output, a class output ((1, C) logits), a plain output (a vector)
FP32 = [[_steps([1, 1, 0, 2]), _logits(0, 2, 1), np.array([1.0, 0.0, 0.0])],   # reads (1, 2); class 1
        [_steps([2, 0, 2, 0]), _logits(3, 0, 1), np.array([0.0, 2.0, 0.0])]]   # reads (2, 2); class 0
GOT = [[_steps([1, 0, 0, 2]), _logits(0, 1, 2), np.array([1.0, 1.0, 0.0])],    # same line, 3 of 4 steps; class 2
       [_steps([2, 2, 0, 0]), _logits(4, 0, 0), np.array([0.0, 3.0, 0.0])]]    # reads (2,), 2 of 4 steps; class 0


def test_each_output_is_read_as_its_task():
    ref = Reference(FP32)
    assert [k.measure for k in ref.kinds] == [SEQUENCE, CLASS, PLAIN]
    seq, cls, plain = ref.compare(GOT)
    assert seq.lines == [True, False] and seq.score == 0.5 and seq.counted == 2
    assert seq.rows.tolist() == [True, False, True, True, True, False, False, True]  # 5 of 8 steps
    assert cls.rows.tolist() == [False, True] and cls.score == 0.5 and cls.counted == 2 and cls.lines is None
    assert plain.rows is None and plain.counted == 0
    assert plain.score == plain.cosine == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert [a.score for a in ref.compare(FP32)] == [1.0, 1.0, 1.0]
    # the guard's call: an output's cosine only where it is the score, the scores unchanged
    lean = ref.compare(GOT, cosines=False)
    assert [a.cosine is None for a in lean] == [True, True, False] and [a.score for a in lean] == [0.5, 0.5, plain.score]


def test_a_small_guard_reads_a_recogniser_by_steps():
    seq = Reference(FP32, by_line=False).compare(GOT)[0]
    assert seq.kind.measure == CLASS and seq.kind.sequence
    assert seq.score == 5 / 8 and seq.counted == 8 and seq.lines == [True, False]  # lines still reported


def test_only_class_rows_are_read_by_argmax():
    """(1, 2, 3) logits, not probabilities: read by the output cosine, however their rows' argmax move;
    the same rows as probabilities (summing to 1, in four axes: three would be a recogniser's) are class rows."""
    fp32 = [[np.array([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]])]]
    got = [[np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]])]]  # the second row's argmax moves
    assert Reference(fp32).kinds[0].measure == PLAIN
    assert Reference(fp32).compare(got)[0].score == pytest.approx(1 / 5)  # cosine: 1 / (sqrt(5) * sqrt(5))
    probs = Reference([[(fp32[0][0] / fp32[0][0].sum(-1, keepdims=True))[None]]])
    assert probs.kinds[0].measure == CLASS
    assert probs.compare([[got[0][0][None] / 2]])[0].score == 0.5


def test_the_cosines():
    zero, one = np.zeros(3), np.ones(3)
    assert cosine(zero, zero) == 1.0 and cosine(zero, one) == 0.0  # restarts: two zero outputs agree
    assert cosine(zero, zero, floor=1e-12) == 0.0  # the guard's floor
    # a NaN has nothing in common with anything (not a NaN cosine); equal arrays whose norms underflow agree
    assert cosine(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == 0.0
    assert cosine(np.array([np.inf]), zero[:1]) == 0.0
    assert cosine(np.array([1e-200]), np.array([1e-200])) == 1.0 and cosine(np.array([1e-200]), np.array([2e-200])) == 0.0
    # sensitivity's per-output cosine is this one, its outputs concatenated
    assert sensitivity.cosine([zero, zero], [zero, zero]) == 1.0
    assert sensitivity.cosine([np.array([np.nan])], [np.array([1.0])]) == 0.0
    assert sensitivity.cosine([np.array([3.0]), np.array([0.0])], [np.array([3.0]), np.array([4.0])]) == pytest.approx(0.6)
    assert cosine(np.array([3.0, 0.0]), np.array([3.0, 4.0])) == pytest.approx(0.6)
    # all outputs flattened together ([3, 0, 0] against [3, 0, 4]) against the mean per output (1 and 0)
    got, want = [[np.array([3.0, 0.0]), np.array([0.0])]], [[np.array([3.0, 0.0]), np.array([4.0])]]
    assert joint_cosine(got, want) == pytest.approx(0.6)
    assert [a.cosine for a in Reference(want).compare(got)] == [1.0, 0.0]
