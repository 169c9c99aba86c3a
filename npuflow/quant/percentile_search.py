"""One percentile for the whole model, chosen by the quantized model's output error.

The best clipping percentile differs by model, and the per-tensor statistics cannot tell:
YOLOv8n's and EfficientNet-Lite0's activations want the 99.99th percentile (output cosine
0.99959 -> 0.99968, FP32 agreement 91.0 -> 92.7 %), PP-OCRv4 rec's re-parameterised backbone
loses 17 lines of 100 there and wants 99.999.  So, like Horizon's ``calibration_type: default``,
each candidate is tried on the whole model and the one whose outputs come closest to the float
model's on the calibration samples wins.  The histograms are collected once; a candidate costs
a parameter assignment, an export and one ONNX Runtime pass over those samples.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from typing import Iterable, Sequence

import numpy as np
import onnx

from .. import scaleout
from .algorithms.apply import relative_error
from .algorithms.capture import Feed, run_outputs
from .assign import assign
from .calibrate import Progress, Statistics
from .config import QuantConfig
from .export import export_qdq
from .plan import QuantPlan

log = logging.getLogger(__name__)

#: The stage name progress listeners see while candidates are tried.
STAGE = "percentile search"


def applies(cfg: QuantConfig, plan: QuantPlan) -> bool:
    """Whether to search: two or more candidates, no percentile set by the user, a percentile point."""
    return (len(cfg.percentile_candidates) >= 2 and not cfg.sets_percentile()
            and any(p.settings.method == "percentile" for p in plan.points.values()))


def with_percentile(plan: QuantPlan, percentile: float) -> QuantPlan:
    """A copy of ``plan`` whose percentile-calibrated points use ``percentile``."""
    out = copy.copy(plan)
    out.points = {
        name: dataclasses.replace(p, settings=p.settings.model_copy(update={"percentile": percentile}))
        if p.settings.method == "percentile" else p
        for name, p in plan.points.items()
    }
    return out


def choose_percentile(model: onnx.ModelProto, plan: QuantPlan, stats: Statistics, candidates: Sequence[float],
                      feeds: list[Feed], reference: list[list[np.ndarray]], *, target_name: str,
                      scale_type: str, progress: Progress | None = None, workers: int = 1,
                      ray_address: str | None = None) -> tuple[float, dict[float, float]]:
    """``(best percentile, {candidate: calibration output error})`` (ties: the higher percentile).

    Candidates are independent, so with ``workers`` > 1 or a ``ray_address`` each is scored in its
    own process or Ray task (:func:`npuflow.scaleout.map_tasks`, the calibration's workers); the
    errors are the serial run's.  ``progress`` hears ``("percentile search", tried, candidates)``
    after each candidate.
    """
    order = sorted(candidates, reverse=True)
    context = {"model": model, "plan": plan, "stats": stats, "feeds": feeds, "reference": reference,
               "target_name": target_name, "scale_type": scale_type,
               "spinning": not scaleout.parallel(workers, ray_address)}

    def report(_p: float, done: int, total: int | None) -> None:
        if progress is not None:
            progress(STAGE, done, total)

    scores = scaleout.map_tasks(_candidate_error, order, workers, ray_address, report, context=context,
                                total=len(order))
    errors = dict(zip(order, scores))
    best = min(errors, key=lambda p: (errors[p], -p))
    log.info("percentile search: %s -> %s", ", ".join(f"{p}: {e:.4g}" for p, e in errors.items()), best)
    return best, errors


def plan_error(model: onnx.ModelProto, plan: QuantPlan, stats: Statistics, feeds: list[Feed],
               reference: list[list[np.ndarray]], *, target_name: str, scale_type: str,
               spinning: bool = True) -> float:
    """The calibration output error of ``plan``: its QDQ model run on ``feeds`` against the float
    model's ``reference`` outputs (:func:`~.algorithms.apply.relative_error`).  Every whole-model
    search scores its candidates with it (this module, :mod:`.method_search`)."""
    q = export_qdq(model, plan, assign(model, plan, stats), target_name=target_name, scale_type=scale_type)
    return relative_error(run_outputs(q, feeds, spinning=spinning), reference)


def _candidate_error(context: dict, percentile: float) -> float:
    """One candidate's calibration output error (a task: runs here or in a worker)."""
    return plan_error(context["model"], with_percentile(context["plan"], percentile), context["stats"],
                      context["feeds"], context["reference"], target_name=context["target_name"],
                      scale_type=context["scale_type"], spinning=context["spinning"])


def apply(model: onnx.ModelProto, plan: QuantPlan, stats: Statistics, samples: Iterable[Feed],
          candidates: Sequence[float], *, target_name: str, scale_type: str,
          progress: Progress | None = None, workers: int = 1,
          ray_address: str | None = None) -> tuple[QuantPlan, dict]:
    """The plan with the chosen percentile, and the record for ``quant_info``.

    Candidates run on the samples whose float outputs calibration kept (bias correction's check
    uses the same ones): on 16 instead of 32, EfficientNet-Lite0 picked the other side of a 7 %
    difference in output error.  The plan comes back unchanged when no sample can be read again.
    """
    feeds = list(itertools.islice(iter(samples), len(stats.outputs)))
    if not feeds:
        return plan, {}
    best, errors = choose_percentile(model, plan, stats, candidates, feeds, stats.outputs[:len(feeds)],
                                     target_name=target_name, scale_type=scale_type, progress=progress,
                                     workers=workers, ray_address=ray_address)
    record = {"chosen": best, "output_errors": {str(p): e for p, e in errors.items()}, "checked_on": len(feeds)}
    return with_percentile(plan, best), {"percentile_search": record}
