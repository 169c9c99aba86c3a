"""Mixed precision: raise the fewest, most sensitive layers to int16 or float until a target holds.

Manual mixed precision is a quantizer config matter (per-layer overrides); this module is the
automatic, accuracy-targeted search.  Given a quantized model, the float model and either a
minimum output similarity or a metric callback with an allowed drop, it

1. ranks layers by sensitivity (:mod:`npuflow.analyze.sensitivity`, "float only this layer");
2. finds the shortest prefix of that ranking which, raised to ``precision``, meets the target
   (binary search over the prefix length: a few evaluations instead of one per layer);
3. drops from that prefix every layer whose removal still meets the target (least sensitive
   first), so the result is the fewest layers this ranking can give.

The result lists what changed, the score before/after, and the quantizer config overrides that
reproduce it (``keep_float`` names for float, ``layers`` overrides for int16).  Float is the default:
DPU-class targets have no int16 datapath, so a raised layer runs on the CPU, as Horizon's
``run_on_cpu`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import onnx

from ..quant.algorithms.graph import Feed
from .qdq_edit import apply_precisions
from .sensitivity import Metric, SensitivityReport, analyze, similarity_metric

log = logging.getLogger(__name__)


@dataclass
class MixedPrecisionResult:
    model: onnx.ModelProto
    changes: dict[str, str]              # layer -> "int16" | "float"
    base_score: float
    score: float
    target: float
    met: bool
    evaluations: int
    sensitivity: SensitivityReport
    config_overrides: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"changes": self.changes, "base_score": self.base_score, "score": self.score,
                "target": self.target, "met": self.met, "evaluations": self.evaluations,
                "config_overrides": self.config_overrides}


def config_overrides(changes: dict[str, str]) -> dict:
    """Quantizer config fragments (``QuantConfig`` keys) that reproduce ``changes``.

    ``keep_float`` reproduces float layers exactly.  The quantizer supports 16-bit activations
    but not 16-bit weights, so an int16 layer becomes a ``layers`` override with 16-bit
    activations; the search itself also scored 16-bit weights (see :mod:`.qdq_edit`).
    """
    return {
        "keep_float": sorted(n for n, p in changes.items() if p == "float"),
        "layers": [{"name": n, "activation": {"bit_width": 16}} for n, p in sorted(changes.items()) if p == "int16"],
    }


def search(
    float_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    feeds: Iterable[Feed] | None = None,
    *,
    min_similarity: float | None = None,
    metric: Metric | None = None,
    max_drop: float | None = None,
    precision: str = "float",
    sensitivity: SensitivityReport | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> MixedPrecisionResult:
    """Fewest layers (by sensitivity) to raise to ``precision`` so the target holds.

    Targets: ``min_similarity`` (mean output cosine similarity, needs ``feeds``) or ``metric``
    plus ``max_drop`` (the metric of the float model minus ``max_drop``).
    """
    if precision not in ("int16", "float"):
        raise ValueError(f"precision must be 'int16' or 'float', not {precision!r}")
    if metric is None:
        if feeds is None or min_similarity is None:
            raise ValueError("give min_similarity with feeds, or metric with max_drop")
        feeds = list(feeds)
        metric = similarity_metric(float_model, feeds)
        target = float(min_similarity)
    else:
        if max_drop is None:
            raise ValueError("a metric target needs max_drop")
        target = metric(float_model) - float(max_drop)
    evals = [0]
    scores: dict[tuple[str, ...], float] = {}
    report: SensitivityReport | None = None

    def expand(chosen: tuple[str, ...]) -> tuple[str, ...]:
        """A weightless layer goes to float with its readers (its quantize step stays otherwise)."""
        if precision != "float" or report is None:
            return chosen
        return tuple(sorted({n for c in chosen for n in report.group(c)}))

    def score(chosen: tuple[str, ...]) -> float:
        key = expand(chosen)
        if key not in scores:
            evals[0] += 1
            scores[key] = metric(apply_precisions(qmodel, {n: precision for n in key}, float_model))
        return scores[key]

    base = score(())
    if base >= target:  # nothing to raise: skip the sensitivity analysis (one evaluation per point)
        report = sensitivity or SensitivityReport("metric", metric(float_model), base)
        return _result(qmodel, float_model, (), precision, base, base, target, True, evals[0], report)
    report = sensitivity or analyze(float_model, qmodel, metric=metric, progress=progress, quant_only=False)
    ranking = report.ranking()
    if score(tuple(ranking)) < target:
        chosen = tuple(ranking)
        return _result(qmodel, float_model, expand(chosen), precision, base, score(chosen), target, False, evals[0],
                       report)
    lo, hi = 0, len(ranking)  # prefix of length hi meets the target, lo does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if score(tuple(ranking[:mid])) >= target:
            hi = mid
        else:
            lo = mid
    chosen = list(ranking[:hi])
    for name in reversed(ranking[:hi]):
        if len(chosen) <= 1:
            break
        trial = tuple(n for n in chosen if n != name)
        if score(trial) >= target:
            chosen = list(trial)
    final = expand(tuple(chosen))
    log.info("mixed precision: %d layers to %s, score %.5f -> %.5f (target %.5f)",
             len(final), precision, base, score(tuple(chosen)), target)
    return _result(qmodel, float_model, final, precision, base, score(tuple(chosen)), target, True, evals[0], report)


def perf_cost(float_model: onnx.ModelProto, target, changes: dict[str, str]) -> dict:
    """Static latency estimate (:mod:`npuflow.perf`) with and without the raised layers.

    Float layers leave the accelerator: they are re-placed on the CPU (their own subgraph, CPU
    time measured by the estimator), which also adds the transfers around them.  int16 layers
    are costed as placed (the estimator has no per-layer bit width).
    """
    from ..check import check
    from ..perf.estimate import Placement, estimate, placement_from_report

    report = check(float_model, target)
    place = placement_from_report(report)
    base = estimate(report.model, report_target(target), place, model_name="int8")
    moved = dict(place)
    for name, precision in changes.items():
        if precision == "float" and name in moved:
            moved[name] = Placement("CPU", f"cpu_{name}")
    mixed = estimate(report.model, report_target(target), moved, model_name="mixed")
    return {"latency_ms": base.latency_ms, "mixed_latency_ms": mixed.latency_ms,
            "fps": base.fps_single_core, "mixed_fps": mixed.fps_single_core}


def report_target(target):
    from ..targets import Target, load_target

    return target if isinstance(target, Target) else load_target(target)


def _result(qmodel, float_model, chosen, precision, base, score, target, met, evals, report):
    changes = {n: precision for n in chosen}
    return MixedPrecisionResult(
        apply_precisions(qmodel, changes, float_model), changes, base, score, target, met, evals, report,
        config_overrides(changes),
    )
