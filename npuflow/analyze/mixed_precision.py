"""Mixed precision: raise the fewest, most sensitive layers to int16 or float until a target holds.

Manual mixed precision is a quantizer config matter (per-layer overrides); this module is the
automatic, accuracy-targeted search.  Given a quantization (:class:`npuflow.QuantizedModel`)
and either a minimum output similarity or a metric callback with an allowed drop, it

1. ranks layers by sensitivity (:mod:`npuflow.analyze.sensitivity`, "float only this layer");
2. finds the shortest prefix of that ranking which, raised to ``precision``, meets the target
   (binary search over the prefix length: a few evaluations instead of one per layer);
3. drops from that prefix every layer whose removal still meets the target (least sensitive
   first; blocks of layers first, halving down to single layers: :func:`_eliminate`), so every
   layer left is needed.

Every candidate is the quantization plan with precision overrides, exported from the statistics
already collected (:mod:`npuflow.quant.requantize`).  The result lists what changed, the score
before/after, and the quantizer config overrides that reproduce it exactly (``keep_float`` names
for float; for int16, ``layers`` entries giving 16-bit activations and weights to every node of
the layer, its fused activations included).  Float is the default:
DPU-class targets have no int16 datapath, so a raised layer runs on the CPU, as Horizon's
``run_on_cpu`` does.

With ``workers`` > 1 or ``ray_address`` (:mod:`npuflow.scaleout`) the sensitivity analysis runs
in parallel, and the search's steps, which depend on each other, are prefetched: the binary
search evaluates the next probes of its decision tree and the elimination the next (block) removals
(assuming the ones before fail), as many at once as there are workers.  The search then walks
the same path as the serial one on the same values, so the result — layers, scores and the
evaluation count, which counts only the assignments the serial search asks for — is the
serial result; prefetched values the path never reaches are the price of the speed-up.

A ``time_budget`` bounds the whole search (basic-pitch's 175 layers on cpu-int8 ran 375 s of
sensitivity and then the search, silently, past a user's 500 s): the sensitivity analysis may
start layers during :data:`SENSITIVITY_SHARE` of it (the rest are left out of the ranking), and
once it is spent the search stops at the best plan it holds: the prefix the binary search last
found to meet the target, or the elimination's current set, both measured to meet it.  The
result then says so (``budget_spent``) and a warning names what was left undone.  Each step of
the search is reported to ``progress`` (the evaluations so far and at most how many remain).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import onnx

from .. import scaleout
from ..quant.algorithms.capture import Feed
from ..quant.pipeline import QuantizedModel
from ..quant.plan import Layer
from .sensitivity import (Metric, SensitivityReport, analyze, report_order, requantizer_of, score_variants,
                          similarity_metric, sweep_context)

log = logging.getLogger(__name__)

#: Share of ``time_budget`` in which the sensitivity analysis may start layers; the search gets the rest.
SENSITIVITY_SHARE = 0.6


@dataclass
class MixedPrecisionResult:
    quantized: QuantizedModel  # the quantization with ``changes`` applied
    changes: dict[str, str]              # layer -> "int16" | "float"
    base_score: float
    score: float
    target: float
    met: bool
    evaluations: int
    sensitivity: SensitivityReport
    config_overrides: dict = field(default_factory=dict)
    #: the time budget ran out: ``changes`` meets the target when ``met`` but may not be the fewest
    #: layers, and layers left out of the sensitivity analysis (``sensitivity.skipped``) were never raised
    budget_spent: bool = False

    def summary(self) -> dict:
        return {"changes": self.changes, "base_score": self.base_score, "score": self.score,
                "target": self.target, "met": self.met, "evaluations": self.evaluations,
                "config_overrides": self.config_overrides, "budget_spent": self.budget_spent,
                "not_scored": list(self.sensitivity.skipped)}

    @property
    def model(self) -> onnx.ModelProto:
        """The quantized graph with ``changes`` (dynamic dimensions kept, as quantized)."""
        return self.quantized.dynamic_model


def config_overrides(changes: dict[str, str], layers: dict[str, Layer]) -> dict:
    """Quantizer config fragments (``QuantConfig`` keys) that reproduce ``changes`` exactly.

    A float layer is a ``keep_float`` name (the quantizer keeps its fused activations with it);
    an int16 layer gives 16-bit activations and weights to each of its nodes (``layers``), as the
    plan override does: a Conv's fused ReLU writes the layer's quantize step.  16 bits need a
    target whose ``numerics.bits`` has 16 (``quantize`` checks).
    """
    wide = [key for n, p in sorted(changes.items()) if p == "int16" for key in layers[n].nodes]
    return {
        "keep_float": sorted(n for n, p in changes.items() if p == "float"),
        "layers": [{"name": key, "activation": {"bit_width": 16}, "weight": {"bit_width": 16}} for key in wide],
    }


class _Scores:
    """Metric values of precision assignments (sorted layer tuples), each computed once, several
    at a time on the workers; ``asked`` holds the assignments the search itself asked for."""

    def __init__(self, pool: scaleout.Workers, precision: str) -> None:
        self.pool, self.precision = pool, precision
        self.known: dict[tuple[str, ...], float] = {}
        self.asked: set[tuple[str, ...]] = set()

    def prefetch(self, keys: Iterable[tuple[str, ...]]) -> None:
        """Evaluate the unknown ``keys`` at once (nothing ahead of need on the serial path)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self.known]
        variants = [[(tuple((n, self.precision) for n in key), None)] for key in todo]
        for key, (value,) in zip(todo, list(self.pool.map(score_variants, variants))):
            self.known[key] = value

    def __call__(self, key: tuple[str, ...]) -> float:
        self.prefetch([key])
        self.asked.add(key)
        return self.known[key]


def _probes(lo: int, hi: int, width: int, known: Callable[[int], bool]) -> list[int]:
    """Up to ``width`` unknown prefix lengths the binary search from ``(lo, hi)`` may probe next
    (its decision tree, breadth first)."""
    probes: list[int] = []
    frontier = deque([(lo, hi)])
    while frontier and len(probes) < width:
        l, h = frontier.popleft()
        if h - l > 1:
            mid = (l + h) // 2
            if not known(mid):
                probes.append(mid)
            frontier.extend([(l, mid), (mid, h)])
    return probes


def search(
    quantized: QuantizedModel,
    feeds: Iterable[Feed] | None = None,
    *,
    min_similarity: float | None = None,
    metric: Metric | None = None,
    max_drop: float | None = None,
    precision: str = "float",
    sensitivity: SensitivityReport | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    time_budget: float | None = None,
) -> MixedPrecisionResult:
    """Fewest layers (by sensitivity) of ``quantized`` to raise to ``precision`` so the target holds.

    Targets: ``min_similarity`` (the lowest output's cosine similarity, needs ``feeds``) or ``metric``
    plus ``max_drop`` (the metric of the float model minus ``max_drop``).  ``workers``,
    ``ray_address``, ``time_budget`` (seconds, None: no limit): see the module docstring.
    """
    if precision not in ("int16", "float"):
        raise ValueError(f"precision must be 'int16' or 'float', not {precision!r}")
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"time_budget must be positive seconds, not {time_budget!r}")
    start = time.monotonic()
    if metric is None:
        if feeds is None or min_similarity is None:
            raise ValueError("give min_similarity with feeds, or metric with max_drop")
        feeds = list(feeds)
        metric = similarity_metric(quantized.float_model, feeds)
        target = float(min_similarity)
    else:
        if max_drop is None:
            raise ValueError("a metric target needs max_drop")
        target = metric(quantized.float_model) - float(max_drop)
    context = sweep_context(quantized, metric, workers, ray_address)
    clock = _Clock(start, time_budget)
    with scaleout.Workers(workers, ray_address, context) as pool:
        return _search(quantized, metric, target, precision, sensitivity, progress, _Scores(pool, precision), clock)


class _Clock:
    """The search's time budget (None: unlimited), counted from ``start``."""

    def __init__(self, start: float, budget: float | None) -> None:
        self.start, self.budget = start, budget

    def left(self) -> float | None:
        return None if self.budget is None else self.budget - (time.monotonic() - self.start)

    def spent(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


def _search(quantized: QuantizedModel, metric: Metric, target: float, precision: str,
            sensitivity: SensitivityReport | None, progress: Callable[[str, int, int], None] | None,
            scores: _Scores, clock: _Clock) -> MixedPrecisionResult:
    """The search of :func:`search` on ``scores``, within ``clock``'s budget."""
    report: SensitivityReport | None = None
    width = scores.pool.width

    def expand(chosen: Sequence[str]) -> tuple[str, ...]:
        """A weightless layer goes to float with its readers (its quantize step stays otherwise)."""
        if precision != "float" or report is None:
            return tuple(chosen)
        return tuple(sorted({n for c in chosen for n in report.group(c)}))

    def score(chosen: Sequence[str]) -> float:
        return scores(expand(chosen))

    def step(detail: str, remaining: int) -> None:
        """One search step done: layers scored plus evaluations so far, of at most ``remaining`` more."""
        if progress is not None and report is not None:
            done = len(report.layers) + len(scores.asked)
            progress(f"search: {detail}", done, done + remaining)

    base = score(())
    if base >= target:  # nothing to raise: skip the sensitivity analysis (one evaluation per point)
        report = sensitivity or SensitivityReport("metric", metric(quantized.float_model), base)
        return _result(quantized, (), precision, base, base, target, True, len(scores.asked), report)
    left = clock.left()
    report = sensitivity or analyze(quantized, metric=metric, progress=progress, quant_only=False,
                                    pool=scores.pool, order=report_order(quantized),
                                    time_budget=None if left is None else left * SENSITIVITY_SHARE)
    ranking = report.ranking()
    full = score(ranking)
    step(f"all {len(ranking)} scored layers raised: {full:.5f}",
         (len(ranking) - 1).bit_length() + _trials_at_most(len(ranking), len(ranking) // 2))
    if full < target:  # the best plan measured: every scored layer, one layer (its sensitivity score) or none
        plans = [(full, expand(ranking)), (base, ())] + [(l.float_only, expand([l.layer])) for l in report.layers]
        best, plan = max(plans, key=lambda p: p[0])
        if report.skipped:
            _warn_budget(target, f"{len(report.skipped)} of {len(report.skipped) + len(ranking)} layers were not "
                                 f"scored, so not raised; the best plan measured ({len(plan)} layers raised) "
                                 f"reaches {best:.5f}")
        return _result(quantized, plan, precision, base, best, target, False,
                       len(scores.asked), report, budget_spent=bool(report.skipped))
    lo, hi = 0, len(ranking)  # prefix of length hi meets the target, lo does not
    while hi - lo > 1 and not clock.spent():
        scores.prefetch(expand(ranking[:m]) for m in
                        _probes(lo, hi, width, lambda m: expand(ranking[:m]) in scores.known))
        mid = (lo + hi) // 2
        if score(ranking[:mid]) >= target:
            hi = mid
        else:
            lo = mid
        step(f"the first {hi} ranked layers meet the target, {lo} do not",
             (hi - lo - 1).bit_length() + _trials_at_most(hi, hi // 2))
    cut = "the binary search stopped" if hi - lo > 1 else ""
    chosen = list(ranking[:hi])
    if not cut:
        chosen, stopped = _eliminate(chosen, lambda trial: score(trial) >= target,
                                     lambda trials: scores.prefetch(expand(t) for t in trials), width, clock.spent,
                                     lambda kept, remaining: step(f"{kept} layers meet the target", remaining))
        cut = "the elimination stopped" if stopped else ""
    final = expand(chosen)
    spent = bool(cut or report.skipped)
    if spent:
        skipped = f"{len(report.skipped)} layers were not scored (never raised)" if report.skipped else ""
        _warn_budget(target, "; ".join(p for p in (cut, skipped) if p) + f": {len(final)} layers raised meet the "
                     "target but may not be the fewest")
    log.info("mixed precision: %d layers to %s, score %.5f -> %.5f (target %.5f); %d evaluations, %d prefetched",
             len(final), precision, base, score(chosen), target, len(scores.asked), len(scores.known))
    return _result(quantized, final, precision, base, score(chosen), target, True, len(scores.asked), report,
                   budget_spent=spent)


def _eliminate(chosen: list[str], meets: Callable[[list[str]], bool], ahead: Callable[[list[list[str]]], None],
               width: int, spent: Callable[[], bool], step: Callable[[int, int], None]) -> tuple[list[str], bool]:
    """``chosen`` (most sensitive first) less every layer whose removal still ``meets`` the target;
    True as well where ``spent`` stopped it.

    Blocks first, least sensitive first: the last half of the layers in one trial, then quarters,
    ..., then one layer at a time, so the single-layer pass (which leaves only layers whose
    removal fails) runs on what the blocks left.  basic-pitch's binary search kept a 116-layer
    prefix of which 9 layers stayed: one layer at a time that was 116 evaluations, ~6 min at load
    15.  ``ahead`` gets the next ``width`` trials (each assuming the ones before it fail) to
    evaluate at once; ``step(kept, at most remaining)`` follows each trial.
    """
    size = max(len(chosen) // 2, 1)
    while True:
        blocks = [chosen[max(end - size, 0):end] for end in range(len(chosen), 0, -size)]
        for k, block in enumerate(blocks):
            trial = [n for n in chosen if n not in block]
            if not trial:
                continue
            if spent():
                return chosen, True
            ahead([[n for n in chosen if n not in b] for b in blocks[k:k + width]])
            if meets(trial):
                chosen = trial
            step(len(chosen), len(blocks) - k - 1 + _trials_at_most(len(chosen), size // 2))
        if size == 1:
            return chosen, False
        size //= 2


def _trials_at_most(layers: int, size: int) -> int:
    """The most trials :func:`_eliminate` makes on ``layers`` layers from block size ``size`` down."""
    total = 0
    while size >= 1:
        total += -(-layers // size)
        size //= 2
    return total


def _warn_budget(target: float, what: str) -> None:
    """The loud line of a search its time budget cut short."""
    log.warning("mixed precision: the time budget ran out before the search for target %.5f finished: %s. Raise "
                "the time budget (CLI: --time-budget), lower --samples, or use --workers to finish it", target, what)


def perf_cost(float_model: onnx.ModelProto, target, changes: dict[str, str]) -> dict:
    """Static latency estimate (:mod:`npuflow.perf`) with and without the raised layers.

    Float layers leave the accelerator: they are re-placed on the CPU (their own subgraph, CPU
    time measured by the estimator), which also adds the transfers around them.  int16 layers
    are costed as placed (the estimator has no per-layer bit width).
    """
    from ..check import check
    from ..perf.estimate import estimate
    from ..placement import Device, NodePlacement

    report = check(float_model, target)
    place = report.placement()
    base = estimate(report.model, report_target(target), place, model_name="int8")
    moved = dict(place)
    for name, precision in changes.items():
        if precision == "float" and name in moved:
            moved[name] = NodePlacement(Device.CPU, f"cpu_{name}")
    mixed = estimate(report.model, report_target(target), moved, model_name="mixed")
    return {"latency_ms": base.latency_ms, "mixed_latency_ms": mixed.latency_ms,
            "fps": base.fps_single_core, "mixed_fps": mixed.fps_single_core}


def report_target(target):
    from ..targets import Target, load_target

    return target if isinstance(target, Target) else load_target(target)


def _result(quantized, chosen, precision, base, score, target, met, evals, report, budget_spent=False):
    changes = {n: precision for n in chosen}
    return MixedPrecisionResult(
        quantized.with_precisions(changes), changes, base, score, target, met, evals, report,
        config_overrides(changes, requantizer_of(quantized).layers), budget_spent,
    )
