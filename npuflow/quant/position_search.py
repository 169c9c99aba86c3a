"""Power-of-two activation fix positions refined by the quantized model's output error.

Per-tensor error is not the model's error: on PP-OCRv4 rec for DPUCZDX8G_ISA1_B4096 the
per-tensor MSE-best positions lowered the output cosine (0.81 -> 0.79) although each tensor's
own error fell (docs/accuracy.md).  This search judges a position only by what the model
outputs: starting from the calibrated positions, coordinate descent visits the scale groups in
graph order, tries each group's fix position one finer (+1: half the step, clips more) and one
coarser (-1), and keeps a move only when the model-output error on the calibration samples
(:func:`.algorithms.apply.relative_error`, the percentile search's measure) drops; sweeps repeat
until none moves a position, ``sweeps`` are done or the time budget is spent.

A scale group (concat inputs, add inputs on power-of-two targets, pass-through ops:
:meth:`.plan.QuantPlan.groups`) moves as one, so the model stays compilable.  A candidate costs
one ONNX Runtime pass, not an export: the model is exported once with every scale the search
changes — activation scales, and the bias codes and scales (``s_in * s_w``) and group constants
that follow them — as graph inputs (:func:`probe_model`), one session runs every candidate, and
the final positions go through :func:`.assign.assign` and the exporter as any other.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ort_session import open_session
from .algorithms.apply import relative_error
from .algorithms.capture import Feed
from .assign import Assignment, assign
from .calibrate import Progress, Statistics
from .config import PositionSearch, QuantConfig
from .export import export_qdq
from .plan import QuantPlan

log = logging.getLogger(__name__)

#: The stage name progress listeners see while candidates are tried.
STAGE = "position search"


@dataclass
class SearchResult:
    """The positions the search chose and what it measured."""

    positions: dict[str, int]  # scale-group root -> fix position (every searched group)
    start: dict[str, int]  # the calibrated positions
    error_before: float
    error_after: float
    candidates: int = 0
    sweeps: int = 0
    seconds: float = 0.0
    history: list[tuple[str, int, float]] = field(default_factory=list)  # accepted (group, position, error)

    @property
    def moved(self) -> dict[str, int]:
        """Groups whose position changed, with the change (+: finer)."""
        return {g: p - self.start[g] for g, p in self.positions.items() if p != self.start[g]}

    def record(self) -> dict:
        """The ``quant_info`` entry."""
        return {"error_before": self.error_before, "error_after": self.error_after, "groups": len(self.positions),
                "moved": self.moved, "candidates": self.candidates, "sweeps": self.sweeps,
                "seconds": round(self.seconds, 2)}


def applies(cfg: QuantConfig, plan: QuantPlan) -> bool:
    """Whether to search: asked for, and some activation point has a power-of-two scale."""
    return cfg.position_search is not None and any(
        p.settings.scale_type == "power_of_two" for p in plan.points.values())


def searched_groups(plan: QuantPlan, asg: Assignment) -> dict[str, list[str]]:
    """Scale-group root -> member points, for every power-of-two activation point, in graph order
    (the plan's point order) of each group's first member."""
    groups: dict[str, list[str]] = {}
    for name in plan.points:
        q = asg.params.get(name)
        if q is not None and q.fix_pos is not None:
            groups.setdefault(plan.find(name), []).append(name)
    return groups


def variable_tensors(plan: QuantPlan, groups: dict[str, list[str]]) -> list[str]:
    """Names of the exported initializers a position changes: the points' scales, and the
    integer values and scales of group constants and of biases whose input is a searched point."""
    roots = set(groups)
    names = [f"{p}_scale" for members in groups.values() for p in members]
    for c, use in plan.consts.items():
        moves = (use.role == "bias" and use.input_tensor is not None and plan.find(use.input_tensor) in roots) or (
            use.role == "constant" and plan.find(c) in roots)
        if moves:
            names += [f"{c}_quantized", f"{c}_scale"]
    return names


def probe_model(qmodel: onnx.ModelProto, names: Iterable[str]) -> tuple[onnx.ModelProto, list[str]]:
    """``qmodel`` with the initializers ``names`` (those it has) turned into graph inputs, and
    the names moved: one ONNX Runtime session then scores any positions by its feeds."""
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    wanted = set(names)
    moved = [t for t in out.graph.initializer if t.name in wanted]
    kept = [t for t in out.graph.initializer if t.name not in wanted]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    out.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    return out, [t.name for t in moved]


def tensor_feeds(asg: Assignment, names: list[str]) -> dict[str, np.ndarray]:
    """The values :func:`.export.export_qdq` would write for ``names`` under ``asg``."""
    feeds = {}
    for name in names:
        base, _, what = name.rpartition("_")
        if what == "scale":
            feeds[name] = np.asarray(asg.params[base].scale, dtype=np.float32)
        else:  # T_quantized
            base = name.removesuffix("_quantized")
            feeds[name] = asg.values[base].astype(asg.params[base].dtype)
    return feeds


class Scorer:
    """Calibration output error of any positions, through one session over the probe model."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, stats: Statistics, groups: dict[str, list[str]],
                 feeds: list[Feed], reference: list[list[np.ndarray]], *, target_name: str, scale_type: str) -> None:
        self.model, self.plan, self.stats, self.groups = model, plan, stats, groups
        self.reference = reference
        self._cache: dict = {}
        base = assign(model, plan, stats, cache=self._cache)
        probe, self.names = probe_model(export_qdq(model, plan, base, target_name=target_name, scale_type=scale_type),
                                        variable_tensors(plan, groups))
        self.session = open_session(probe, level="all", threads=2, what="run")
        inputs = {i.name for i in self.session.get_inputs()}
        self.feeds = [{n: v for n, v in f.items() if n in inputs} for f in feeds]
        self.calls = 0

    def assignment(self, positions: dict[str, int]) -> Assignment:
        """Parameters and constants with ``positions`` (group root -> fix position)."""
        by_point = {p: pos for g, pos in positions.items() for p in self.groups[g]}
        return assign(self.model, self.plan, self.stats, cache=self._cache, positions=by_point)

    def error(self, positions: dict[str, int]) -> float:
        """The model-output error on the calibration samples with ``positions``."""
        self.calls += 1
        fixed = tensor_feeds(self.assignment(positions), self.names)
        outs = [self.session.run(None, {**f, **fixed}) for f in self.feeds]
        return relative_error(outs, self.reference)


def search(scorer: Scorer, start: dict[str, int], settings: PositionSearch, *,
           progress: Progress | None = None, clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Coordinate descent over the groups of ``start`` (group root -> calibrated position).

    A move is kept when it lowers the error by more than ``settings.min_gain`` of the current
    error (so the rounding noise of a few dozen samples does not move positions).  In each group
    the finer position is tried first, then, if that did not pay, the coarser one; a kept move
    is followed further the same way while it keeps paying.  The budget is checked before every
    candidate: when it runs out the search returns the best positions found so far."""
    t0 = clock()
    state = SearchResult(positions=dict(start), start=dict(start), error_before=0.0, error_after=0.0)
    state.error_before = state.error_after = scorer.error(state.positions)

    def in_budget() -> bool:
        return clock() - t0 < settings.budget_s

    def try_moves(group: str) -> bool:
        """Move ``group`` finer (or else coarser) while that lowers the error; whether it moved."""
        for step in (1, -1):
            moved = False
            while in_budget():
                trial = {**state.positions, group: state.positions[group] + step}
                e = scorer.error(trial)
                if not e < state.error_after * (1.0 - settings.min_gain):
                    break
                state.positions, state.error_after, moved = trial, e, True
                state.history.append((group, trial[group], e))
            if moved:
                return True
        return False

    order = list(start)
    for sweep in range(settings.sweeps):
        state.sweeps = sweep + 1
        changed = False
        for k, group in enumerate(order):
            if not in_budget():
                break
            changed |= try_moves(group)
            if progress is not None:
                progress(STAGE, sweep * len(order) + k + 1, settings.sweeps * len(order))
        log.info("position search sweep %d: error %.4g, %d groups moved so far, %d candidates", state.sweeps,
                 state.error_after, len(state.moved), scorer.calls)
        if not changed or not in_budget():
            break
    state.candidates, state.seconds = scorer.calls, clock() - t0
    log.info("position search: error %.4g -> %.4g, %d of %d groups moved, %d candidates, %d sweeps, %.1f s",
             state.error_before, state.error_after, len(state.moved), len(start), state.candidates, state.sweeps,
             state.seconds)
    return state


def apply(model: onnx.ModelProto, plan: QuantPlan, stats: Statistics, samples: Iterable[Feed],
          settings: PositionSearch, *, target_name: str, scale_type: str,
          progress: Progress | None = None) -> tuple[dict[str, int], dict]:
    """The moved positions (activation point -> fix position, every member of a moved scale
    group: :func:`.assign.assign`'s ``positions``) and the record for ``quant_info``; nothing
    when no sample can be read again.

    Candidates run on the samples whose float outputs calibration kept (the percentile search's
    and bias correction's check use the same ones), at most ``settings.samples`` of them."""
    n = len(stats.outputs) if settings.samples is None else min(settings.samples, len(stats.outputs))
    feeds = list(itertools.islice(iter(samples), n))
    if not feeds:
        return {}, {}
    base = assign(model, plan, stats)
    groups = searched_groups(plan, base)
    start = {g: int(base.params[members[0]].fix_pos) for g, members in groups.items()}
    scorer = Scorer(model, plan, stats, groups, feeds, stats.outputs[:len(feeds)], target_name=target_name,
                    scale_type=scale_type)
    result = search(scorer, start, settings, progress=progress)
    record = {**result.record(), "checked_on": len(feeds)}
    moved = {p: result.positions[g] for g in result.moved for p in groups[g]}
    return moved, {"position_search": record}
