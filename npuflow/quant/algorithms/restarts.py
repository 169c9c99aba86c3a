"""Restarts of fast finetune (``fast_finetune: {restarts: N, select_on: K}``): the reconstruction
run N times with seeds ``seed .. seed+N-1``, the one kept that reads best on K calibration samples
the reconstruction never saw.

Why: the seed (the order in which each layer's sampled columns are visited) moves the result by
several points on power-of-two targets, more than QAT from those starts added (docs/accuracy.md,
"Restarts of fast finetune chosen on held-out samples").  The error the reconstruction minimises
on its own samples does not tell the draws apart, and neither does the output cosine or MSE on
other samples; agreement on the task's own reading of the outputs, on samples the reconstruction
never saw, tells a clearly worse draw from a better one (draws a few samples apart it does not
resolve).  The held-out samples are held out of calibration too (:func:`.apply.hold_out`),
so every restart starts from the model the other samples alone give.

The score is task agreement with the float model on the held-out samples, computed without labels
(:func:`agreement`, the QAT guard's measure: :mod:`npuflow.quant.agreement`): for a recogniser's
``(N, T, C)`` probability rows the share of samples whose greedy CTC reading equals FP32's (what a
user reading whole lines sees), for class or probability rows (``(N, C)`` logits, or rows that sum
to 1) the argmax agreement per row, for any other output (a detector's boxes and scores, a
segmenter's maps) the mean output cosine (a NaN output's is 0); the mean over the outputs.  Ties go
to the higher mean output cosine (per output, averaged over the outputs), then to the earlier seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ..agreement import Outputs, Reference
from .capture import HeldOutRuns, run_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restart:
    """One run of the reconstruction and how it read on the held-out samples."""

    seed: int
    score: float      # task agreement with FP32 (:func:`agreement`), higher is better
    cosine: float     # mean per-sample output cosine to FP32 (the tie-break)
    seconds: float    # the reconstruction's time (its cache makes a repeated run fast)

    def to_json(self) -> dict:
        return {"seed": self.seed, "score": round(self.score, 6), "cosine": round(self.cosine, 6),
                "seconds": round(self.seconds, 2)}


def reference(fp32: Outputs) -> Reference:
    """The float model's outputs on the held-out samples, read as restarts read them: lines always
    decide a recogniser (the QAT guard reads the rest alike)."""
    return Reference(fp32, by_line=True)


def agreement(outputs: Outputs, fp32: Outputs | Reference) -> tuple[float, float]:
    """``(task agreement, mean output cosine)`` of ``outputs`` against the float model's outputs
    ``fp32`` (both: per sample, the graph outputs in order; or :func:`reference` of them, made
    once); see the module docstring for the measure."""
    per_output = (fp32 if isinstance(fp32, Reference) else reference(fp32)).compare(outputs)
    return float(np.mean([a.score for a in per_output])), float(np.mean([a.cosine for a in per_output]))


def best_of(held_out: HeldOutRuns, seeds: list[int],
            run: Callable[[int], tuple[onnx.ModelProto, object]]) -> tuple[onnx.ModelProto, object, list[Restart], int]:
    """Run ``run(seed)`` (one reconstruction: ``(model, report)``) for every seed, judge each model
    on ``held_out``'s samples against its float model, and return ``(model, report, restarts, chosen
    index)`` of the best (module docstring).  Only the best model is kept in memory; its outputs are
    remembered in ``held_out`` (for quantize's accuracy check)."""
    fp32 = reference(held_out.float_outputs())
    restarts: list[Restart] = []
    kept: tuple[onnx.ModelProto, object] | None = None
    chosen = 0
    for seed in seeds:
        t0 = time.time()
        model, report = run(seed)
        seconds = time.time() - t0
        outputs = run_outputs(model, held_out.feeds)
        score, cosine = agreement(outputs, fp32)
        restarts.append(Restart(seed, score, cosine, seconds))
        log.info("fast finetune restart seed %d: agreement %.4f, output cosine %.6f on %d held-out samples (%.1f s)",
                 seed, score, cosine, len(held_out.feeds), seconds)
        if kept is None or (score, cosine) > (restarts[chosen].score, restarts[chosen].cosine):
            kept, chosen = (model, report), len(restarts) - 1
            held_out.remember(model, outputs)
        del outputs
    if kept is None:
        raise ValueError("best_of needs at least one seed")
    log.info("fast finetune: restart seed %d kept (%d restarts)", restarts[chosen].seed, len(restarts))
    return kept[0], kept[1], restarts, chosen
