"""What a model output is, and how a task reads it: class or probability rows, a recogniser's
per-step probabilities, and the greedy CTC reading of them.  Plain numpy, so the benchmarks and
any stage read outputs the same way without importing torch (the QAT guard decides with them)."""

from __future__ import annotations

import numpy as np


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
