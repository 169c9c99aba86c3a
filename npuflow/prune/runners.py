"""Iterative and one-step channel pruning (the two methods of the Vitis AI Optimizer).

Iterative (analysis once, then rounds of prune -> fine-tune): :class:`IterativePruningRunner`
uses the sensitivity table to give each group the largest ratio whose metric loss stays within
a threshold, and searches the threshold that meets the requested cost (a MAC removal ratio,
absolute MACs, or an estimated latency on the target).  It returns a *sparse* model (channels
masked to zero) for the user's fine-tuning loop and saves each round's spec so the user can step
back; :meth:`IterativePruningRunner.slim` removes the channels for good.

One-step (EagleEye): :class:`OneStepPruningRunner` samples candidate subnets at the requested
ratio, recalibrates BatchNorm statistics on a few batches (adaptive BN), scores each with the
callback and keeps the best; the slim subnet is then fine-tuned once.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import NpuflowError
from ..model import write_atomic
from ..targets import Target, load_target
from .cost import CostModel
from .groups import (
    apply_masks,
    channel_rankings,
    kept_channels,
    removed_channels,
    slim,
)
from .sensitivity import DEFAULT_RATIOS, EvalFn, Sensitivity, analyse, cache_key, output_similarity, plot

log = logging.getLogger(__name__)

#: how far past a requested removal ratio a round may land before NPF_PRUNE_RATIO_MISSED warns
#: (one 16-channel step of a 64-channel group is 25 % of its channels, so finer is rarely possible)
RATIO_TOLERANCE = 0.05


@dataclass
class RoundRecord:
    """One pruning round: what was kept and what it costs (saved as ``round_<n>.spec``)."""

    round: int
    spec: dict[str, int]
    removed: dict[str, list[int]]
    threshold: float | None
    before: dict[str, float]
    after: dict[str, float]
    goal: str = ""  # e.g. "removal_ratio 0.3", "target_latency_ms 0.01"
    #: False when even every group at its largest analysed ratio (channel counts rounded up to the
    #: target's parallelism) misses the goal: the round is that most-pruned model
    goal_met: bool = True


class _Runner:
    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        *,
        target: str | Target | None = None,
        channel_divisible: int | None = None,
        excludes: Iterable[str] = (),
        workdir: str | Path = ".npuflow_prune",
    ) -> None:
        self.model = model.eval()
        self.example_inputs = example_inputs
        self.target = load_target(target) if target is not None else None
        if channel_divisible is None:
            channel_divisible = self.target.engines.conv.output_channel_parallel if self.target else 1
        if channel_divisible < 1:
            raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="channel_divisible", value=channel_divisible,
                               reason="must be a positive integer")
        self.channel_divisible = int(channel_divisible)
        self.excludes = tuple(excludes)
        self.workdir = Path(workdir)
        self.cost = CostModel(example_inputs, self.target)

    def _spec_from_ratios(self, rankings, ratios: dict[str, float]) -> dict[str, int]:
        return {
            name: kept_channels(group.channels, ratios.get(name, 0.0), self.channel_divisible)
            for name, (group, _) in rankings.items()
        }

    def _slim_from_spec(self, model: nn.Module, rankings, spec: dict[str, int]) -> nn.Module:
        return slim(model, self.example_inputs, removed_channels(rankings, spec))


class IterativePruningRunner(_Runner):
    """``ana`` once, then ``prune`` (sparse) -> fine-tune -> ``prune`` ... -> ``slim``."""

    def __init__(self, model: nn.Module, example_inputs, **kwargs) -> None:
        super().__init__(model, example_inputs, **kwargs)
        self.sensitivity: Sensitivity | None = None
        self.rounds: list[RoundRecord] = []
        self.baseline_cost = self.cost.measure(self.model)

    def ana(
        self,
        eval_fn: EvalFn | None = None,
        ratios=DEFAULT_RATIOS,
        forced: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> Sensitivity:
        """Sensitivity analysis, cached in ``workdir/<hash>.sens`` (reused unless ``forced``)."""
        key = cache_key(self.model, ratios, self.channel_divisible, self.excludes)
        path = self.workdir / f"{key}.sens"
        if path.exists() and not forced:
            self.sensitivity = Sensitivity.load(path)
            return self.sensitivity
        self.sensitivity = analyse(
            self.model, self.example_inputs, eval_fn, ratios=ratios,
            channel_divisible=self.channel_divisible, excludes=self.excludes, progress=progress,
        )
        self.sensitivity.save(path)
        plot(self.sensitivity, path.with_suffix(".sens.png"))
        return self.sensitivity

    def prune(
        self,
        removal_ratio: float | None = None,
        *,
        target_macs: float | None = None,
        target_latency_ms: float | None = None,
        model: nn.Module | None = None,
        mode: str = "sparse",
    ) -> nn.Module:
        """Prune ``model`` (default: the baseline) to the requested cost.

        Exactly one of ``removal_ratio`` (fraction of MACs to remove), ``target_macs`` or
        ``target_latency_ms`` (estimated on the runner's target) is given.  ``mode='sparse'``
        masks channels (for fine-tuning), ``'slim'`` removes them.
        """
        if self.sensitivity is None:
            raise NpuflowError("NPF_PRUNE_NO_ANALYSIS")
        goal = _goal(removal_ratio, target_macs, target_latency_ms, self.target)
        base = model if model is not None else self.model
        rankings = channel_rankings(base, self.example_inputs, self.excludes)
        before = self.baseline_cost  # goals are relative to the original model, as in Vitis AI
        spec, threshold = self._search_threshold(base, rankings, goal, before)
        steps: dict[str, float] = {}
        if goal.kind != "latency":  # a latency estimate per step exports the model: too slow to step
            spec, steps = self._step_back(base, rankings, spec, goal, before)
        removed = removed_channels(rankings, spec)
        slim_model = slim(base, self.example_inputs, removed)
        after = self.cost.measure(slim_model)
        met = goal.met(before, after)
        record = RoundRecord(len(self.rounds) + 1, spec, removed, threshold, before, after, goal.text, met)
        if not met:
            log.warning("pruning goal %s not reached: every group at its largest analysed ratio, channel counts "
                        "rounded up to multiples of %d, gives %s", goal.text, self.channel_divisible,
                        goal.reached(before, after))
        elif goal.kind == "ratio" and goal.achieved(before, after) - goal.value > RATIO_TOLERANCE:
            self._warn_overshoot(rankings, spec, steps, goal.value, goal.achieved(before, after))
        self.rounds.append(record)
        write_atomic(self.workdir / f"round_{record.round}.spec", json.dumps(asdict(record), indent=1))
        if mode == "slim":
            return slim_model
        if mode != "sparse":
            raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="mode", value=mode, reason="use 'sparse' or 'slim'")
        return apply_masks(copy.deepcopy(base), self.example_inputs, removed)

    def slim(self, sparse_model: nn.Module, round: int | None = None) -> nn.Module:
        """The dense model of a sparse one (the last round's spec, or ``round``'s)."""
        if not self.rounds:
            raise NpuflowError("NPF_PRUNE_NO_ANALYSIS")
        record = self.rounds[(round or len(self.rounds)) - 1]
        return slim(sparse_model, self.example_inputs, record.removed)

    def _allowed_counts(self, name: str, channels: int) -> list[int]:
        """The channel counts the analysis priced for a group (its ratios, rounded), ascending."""
        ratios = [0.0, *self.sensitivity.ratios] if name in self.sensitivity.groups else [0.0]
        return sorted({kept_channels(channels, r, self.channel_divisible) for r in ratios})

    def _step_back(self, base, rankings, spec, goal, before) -> tuple[dict[str, int], dict[str, float]]:
        """Give channels back, one allowed count at a time, while the goal still holds.

        The threshold moves every group together, in the order of their sensitivity, so one
        group's jump to its next rounded count can overshoot the goal by a lot (round 15's RepVGG:
        0.3 asked, a 32-channel group halved on a 16-wide engine, 59.5 % removed).  Stepping
        back a group that the goal does not need removes less and so costs no accuracy.  The most
        sensitive groups (largest loss at their ratio) are tried first.  Also returns, per pruned
        group, the removal ratio one more step back would give (what the goal's rounding costs).
        """
        sens = self.sensitivity
        spec = dict(spec)

        def loss(name: str) -> float:
            if name not in sens.groups:
                return 0.0
            kept = {kept_channels(sens.groups[name]["channels"], r, self.channel_divisible): m
                    for r, m in zip(sens.ratios, sens.groups[name]["metric"])}
            return sens.baseline - kept.get(spec[name], sens.baseline)

        def one_back(name: str) -> tuple[dict[str, int], dict[str, float]]:
            larger = [c for c in self._allowed_counts(name, rankings[name][0].channels) if c > spec[name]]
            trial = {**spec, name: larger[0]}
            return trial, self.cost.measure(self._slim_from_spec(base, rankings, trial), latency=False)

        for name in sorted(spec, key=loss, reverse=True):
            while spec[name] < rankings[name][0].channels:
                trial, cost = one_back(name)
                if not goal.met(before, cost):
                    break
                spec = trial
        # a step that missed the goal misses it still (later steps only removed less): price each now
        steps = {name: goal.achieved(before, one_back(name)[1])
                 for name in spec if spec[name] < rankings[name][0].channels}
        return spec, steps

    def _warn_overshoot(self, rankings, spec, steps, asked: float, achieved: float) -> None:
        """``NPF_PRUNE_RATIO_MISSED``: the groups whose rounded steps put the ratio far past the goal."""
        groups = "; ".join(
            f"{name} {rankings[name][0].channels} -> {spec[name]} channels (steps "
            f"{', '.join(map(str, self._allowed_counts(name, rankings[name][0].channels)))}; one step back "
            f"removes {steps[name]:.3f})"
            for name in steps)
        warning = NpuflowError("NPF_PRUNE_RATIO_MISSED", asked=f"{asked:g}", achieved=f"{achieved:.3f}",
                               divisible=self.channel_divisible, groups=groups or "none")
        log.warning("[%s] %s\n  hint: %s", warning.code, warning.message, warning.hint)

    def _search_threshold(self, base, rankings, goal, before) -> tuple[dict[str, int], float]:
        """Smallest loss threshold whose per-group ratios meet the goal (bisection)."""
        sens = self.sensitivity
        names = [n for n in rankings if n in sens.groups]

        def spec_at(t: float) -> dict[str, int]:
            return self._spec_from_ratios(rankings, {n: sens.max_ratio(n, t) for n in names})

        def met(spec) -> bool:
            sub = self._slim_from_spec(base, rankings, spec)
            return goal.met(before, self.cost.measure(sub, latency=goal.kind == "latency"))

        lo, hi = 0.0, 1.0
        if not met(spec_at(hi)):
            best = spec_at(hi)
            return best, hi
        for _ in range(12):
            mid = (lo + hi) / 2
            if met(spec_at(mid)):
                hi = mid
            else:
                lo = mid
        return spec_at(hi), hi


@dataclass
class Candidate:
    spec: dict[str, int]
    cost: dict[str, float]
    score: float


@dataclass
class SearchResult:
    removal_ratio: float
    baseline: dict[str, float]
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> int:
        return max(range(len(self.candidates)), key=lambda i: self.candidates[i].score)


class OneStepPruningRunner(_Runner):
    """EagleEye: sample subnets at the ratio, adaptive-BN each, keep the best by the callback."""

    def search(
        self,
        removal_ratio: float,
        *,
        num_subnet: int = 20,
        calibration_fn: Callable[[nn.Module], None] | None = None,
        calib_batches: Iterable | None = None,
        eval_fn: EvalFn | None = None,
        tolerance: float = 0.03,
        seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> SearchResult:
        """Score ``num_subnet`` candidates whose MAC removal is within ``tolerance`` of the ratio."""
        if not 0.0 < removal_ratio < 1.0:
            raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="removal_ratio", value=removal_ratio,
                               reason="must be between 0 and 1")
        rankings = channel_rankings(self.model, self.example_inputs, self.excludes)
        baseline = self.cost.measure(self.model, latency=False)
        score = eval_fn or output_similarity(self.model, self.example_inputs)
        recalibrate = calibration_fn or _adaptive_bn(calib_batches if calib_batches is not None else [self.example_inputs])
        rng = random.Random(seed)
        result = SearchResult(removal_ratio, baseline)
        attempts = 0
        while len(result.candidates) < num_subnet and attempts < num_subnet * 20:
            attempts += 1
            spec, sub, cost = self._sample(rankings, removal_ratio, baseline, rng)
            if abs((1 - cost["macs"] / baseline["macs"]) - removal_ratio) > tolerance:
                continue
            recalibrate(sub)
            sub.eval()
            result.candidates.append(Candidate(spec, cost, float(score(sub))))
            if progress:
                progress(len(result.candidates))
        if not result.candidates:
            raise NpuflowError("NPF_PRUNE_NO_CANDIDATE", ratio=removal_ratio, tries=attempts)
        self.result = result
        write_atomic(self.workdir / "one_step.search", json.dumps(asdict(result), indent=1))
        return result

    def _sample(self, rankings, ratio, baseline, rng):
        """Random per-group ratios, rescaled a few times towards the requested MAC removal."""
        raw = {n: rng.random() for n in rankings}
        scale = ratio
        for _ in range(6):
            ratios = {n: min(0.9, r * 2 * scale) for n, r in raw.items()}
            spec = self._spec_from_ratios(rankings, ratios)
            sub = self._slim_from_spec(self.model, rankings, spec)
            cost = self.cost.measure(sub, latency=False)
            achieved = 1 - cost["macs"] / baseline["macs"]
            if abs(achieved - ratio) < 0.01 or achieved <= 0:
                break
            scale *= ratio / achieved
        return spec, sub, cost

    def prune(self, index: int | None = None) -> nn.Module:
        """The slim subnet of candidate ``index`` (default: the best-scoring one)."""
        if getattr(self, "result", None) is None:
            raise NpuflowError("NPF_PRUNE_NO_ANALYSIS")
        cand = self.result.candidates[self.result.best if index is None else index]
        rankings = channel_rankings(self.model, self.example_inputs, self.excludes)
        return self._slim_from_spec(self.model, rankings, cand.spec)


def _adaptive_bn(batches) -> Callable[[nn.Module], None]:
    """Default calibration: reset BN statistics and re-estimate them on the batches."""

    def run(model: nn.Module) -> None:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for batch in batches:
                model(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
        model.eval()

    return run


@dataclass
class _Goal:
    kind: str
    value: float

    @property
    def text(self) -> str:
        """The goal as the API names it."""
        return f"{_GOAL_NAMES[self.kind]} {self.value:g}"

    def achieved(self, before: dict[str, float], after: dict[str, float]) -> float:
        """The fraction of MACs removed."""
        return 1 - after["macs"] / before["macs"]

    def reached(self, before: dict[str, float], after: dict[str, float]) -> str:
        """What a round reached, in the goal's terms."""
        if self.kind == "ratio":
            return f"removal ratio {self.achieved(before, after):.3f}"
        if self.kind == "macs":
            return f"{after['macs']:.3g} MACs"
        return f"{after['latency_ms']:.4g} ms"

    def met(self, before: dict[str, float], after: dict[str, float]) -> bool:
        if self.kind == "ratio":
            return self.achieved(before, after) >= self.value
        if self.kind == "macs":
            return after["macs"] <= self.value
        return after["latency_ms"] <= self.value


_GOAL_NAMES = {"ratio": "removal_ratio", "macs": "target_macs", "latency": "target_latency_ms"}


def _goal(ratio, macs, latency, target) -> _Goal:
    given = [(k, v) for k, v in (("ratio", ratio), ("macs", macs), ("latency", latency)) if v is not None]
    if len(given) != 1:
        raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="goal", value=[k for k, _ in given] or None,
                           reason="give exactly one of removal_ratio, target_macs, target_latency_ms")
    kind, value = given[0]
    if kind == "ratio" and not 0.0 < value < 1.0:
        raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="removal_ratio", value=value, reason="must be between 0 and 1")
    if kind == "latency" and target is None:
        raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="target_latency_ms", value=value,
                           reason="a latency goal needs a target (target=...)")
    return _Goal(kind, float(value))
