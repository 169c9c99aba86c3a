"""Accuracy-targeted quantization: the cheapest steps that reach a similarity, every layer kept on
the accelerator (AIMET's AutoQuant idea, for npuflow's targets).  It sits in ``analyze`` because
it drives the quantizer and the analysis (mixed precision) from above; the quantizer never calls it.

A user states what "accurate enough" means — a minimum output similarity to the float model, or
a metric of their own with a minimum — and how long they can wait.  :func:`auto_quantize` then
runs a ladder of steps, cheapest first, each on top of the best configuration so far:

1. the configuration given (the target's defaults);
2. calibration search: activation ranges by a whole-model percentile search
   (:mod:`npuflow.quant.percentile_search`) over a wider candidate list;
3. equalisation: cross-layer equalisation with bias correction;
4. GPTQ (closed-form rounding on each layer's grid, the bias refitted): no seed, no iterations,
   a fraction of AdaRound's time, so it comes first; which of the two is more accurate differs
   by model and metric, so AdaRound still runs when GPTQ falls short;
5. AdaRound (layer-wise learned rounding);
6. block reconstruction (BRECQ with QDrop);
7. only when the caller allows it (``qat``): QAT from the best model (label-free distillation,
   :func:`npuflow.torch.onnx_qat.ladder_step`, whose own guard returns the better of its start
   and the trained model).

The finetune rungs (4-6) run twice where the activation ranges differ: on the finetune default
ones (MSE positions on power-of-two targets) and on those of the best model so far (min/max or
the searched percentile), since which start suits learned rounding differs from model to model;
the step keeps the better and says which.
A step is kept only when it raises the score; the ladder stops as soon as the target holds or the
time budget is spent (a step is not started once the budget is gone).  Every layer stays on the
accelerator throughout.  Only when the user allows it (``allow_cpu_fallback``) and the ladder
falls short does the last step move the fewest, most sensitive layers to float on the CPU
(:mod:`npuflow.analyze.mixed_precision`), with the latency that costs from the static estimator.
The result says which steps ran, what each bought and how long each took.

The default score is the quantizer's own accuracy check: the lowest output cosine similarity on
``similarity_samples`` calibration samples.  A ``metric`` callback (``metric(QuantizedModel) ->
float``, higher is better) replaces it, for example top-1 agreement on held-out data.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import NpuflowError
from ..graph import is_qdq
from ..quant.config import QuantConfig
from ..quant.pipeline import QuantizedModel, config_of, quantize
from ..targets import Target, load_target

log = logging.getLogger(__name__)

#: The ladder: (name, what it does, config patch), cheapest first.
LADDER: tuple[tuple[str, str, dict], ...] = (
    ("calibration search", "whole-model percentile search of activation ranges",
     {"activation": {"method": "percentile"}, "percentile_candidates": [99.9, 99.99, 99.999, 99.9999]}),
    ("equalisation", "cross-layer equalisation with bias correction",
     {"include_cle": True, "include_bias_corr": True}),
    ("GPTQ", "closed-form weight rounding with the bias refitted", {"fast_finetune": {"method": "gptq"}}),
    ("AdaRound", "layer-wise learned weight rounding", {"fast_finetune": {"method": "adaround"}}),
    ("block reconstruction", "BRECQ block reconstruction with QDrop", {"fast_finetune": {"method": "brecq"}}),
)

Metric = Callable[[QuantizedModel], float]
#: A QAT step: trains from the model given, returns the model to keep (a copy whose report may be
#: rewritten) and a note for the step.
QatStep = Callable[[QuantizedModel], "tuple[QuantizedModel, str]"]

#: The step after the ladder, only when the caller allows it (``qat``).
QAT_STEP = ("QAT", "label-free quantization-aware training, distilled from the float model")


@dataclass
class Step:
    """One rung of the ladder as it ran."""

    name: str
    description: str
    score: float | None  # None: not run (target already met or budget spent)
    seconds: float
    kept: bool
    note: str = ""


@dataclass
class AutoResult:
    """What :func:`auto_quantize` found: the best model, the steps and whether the target holds."""

    quantized: QuantizedModel
    config: QuantConfig
    score: float
    target: float
    met: bool
    steps: list[Step] = field(default_factory=list)
    cpu_fallback: dict | None = None  # layers moved to the CPU and the estimated latency cost

    def text(self, score: float | None = None) -> str:
        """``score`` (the best one by default) as printed beside the target: six decimals, more where
        six would round a score below the target up to it (0.9999897 for 0.99999, which read as
        "NOT met: 0.999990", every step's score equal to the target)."""
        score = self.score if score is None else score
        for digits in range(6, 16):
            text = f"{score:.{digits}f}"
            if (float(text) >= self.target) == (score >= self.target):
                break
        return text

    def summary(self) -> dict:
        return {"score": self.score, "target": self.target, "met": self.met,
                "steps": [vars(s) for s in self.steps], "cpu_fallback": self.cpu_fallback,
                "config": self.config.model_dump(exclude_defaults=True)}


def auto_quantize(model: Any, calib_data: Any, target: Any, *, min_similarity: float = 0.99,
                  metric: Metric | None = None, min_metric: float | None = None,
                  time_budget_s: float | None = None, allow_cpu_fallback: bool = False,
                  config: QuantConfig | dict | str | None = None, input_shapes: Any = None,
                  qat: QatStep | None = None,
                  progress: Callable[[str, int, int | None], None] | None = None) -> AutoResult:
    """Quantize ``model`` for ``target`` with the cheapest ladder steps that reach the target.

    Target: ``min_similarity`` (lowest output cosine on the quantizer's accuracy-check samples)
    or ``metric`` with ``min_metric``.  ``calib_data`` is read once per step, so it must be
    re-iterable (a folder, a list); a one-shot iterator is read into a list first.
    ``qat`` allows a last step before any CPU fallback: a function that trains from the best model
    and returns the result with a note (:func:`npuflow.torch.onnx_qat.ladder_step` makes one; the
    quantizer's stages never import torch)."""
    if metric is not None and min_metric is None:
        raise NpuflowError("NPF_QUANT_BAD_CONFIG", reason="a metric needs min_metric, the score to reach")
    goal = float(min_metric if metric is not None else min_similarity)
    if isinstance(calib_data, Iterator):
        calib_data = list(calib_data)
    base = config_of(config)
    tgt = load_target(target)
    start = time.perf_counter()

    def run(cfg: QuantConfig, name: str) -> tuple[QuantizedModel, float, float]:
        t0 = time.perf_counter()
        if progress is not None:
            progress(f"auto: {name}", 0, None)
        q = quantize(model, calib_data, tgt, cfg, input_shapes=input_shapes, warn=False)
        return q, _score(q, metric), time.perf_counter() - t0

    best, best_score, seconds = run(base, "target defaults")
    best_cfg = base
    pre_search: dict | None = None  # the range keys before a kept calibration search
    steps = [Step("target defaults", "the configuration given", best_score, seconds, True)]

    def why_not(name: str, description: str) -> Step | None:
        """The step as not run, when the target holds or the budget is spent; else None."""
        spent = time.perf_counter() - start
        if best_score >= goal or (time_budget_s is not None and spent >= time_budget_s):
            return Step(name, description, None, 0.0, False,
                        "target met" if best_score >= goal else f"time budget spent ({spent:.0f} s)")
        return None

    for name, description, patch in LADDER:
        if (skipped := why_not(name, description)) is not None:
            steps.append(skipped)
            continue
        if "fast_finetune" in patch:
            candidates = _finetune_starts(best_cfg, pre_search, patch, tgt)
        else:
            candidates = [("", QuantConfig.model_validate(_merge(best_cfg.model_dump(exclude_unset=True), patch)))]
        q, score, seconds, cfg, tried = None, -float("inf"), 0.0, best_cfg, []
        for label, c in candidates:
            if seconds and time_budget_s is not None and time.perf_counter() - start >= time_budget_s:
                break
            cq, cscore, csec = run(c, name)
            seconds += csec
            tried.append(f"{label}: {cscore:.6g}" if label else "")
            if cscore > score:
                q, score, cfg = cq, cscore, c
        kept = score > best_score
        note = "; ".join([t for t in tried if t] + ([] if kept else ["no gain: not kept"]))
        steps.append(Step(name, description, score, seconds, kept, note))
        if kept:
            if name == "calibration search":
                pre_search = _range_keys(best_cfg.model_dump(exclude_unset=True))
            best, best_score, best_cfg = q, score, cfg
        log.info("auto: %s -> %.6f (%.1f s)%s", name, score, seconds, "" if kept else ", not kept")
    ptq_best = best
    if qat is not None:
        if (skipped := why_not(*QAT_STEP)) is not None:
            steps.append(skipped)
        else:
            t0 = time.perf_counter()
            q, note = _qat(qat, best, calib_data)
            score = _score(q, metric)
            kept = score > best_score
            steps.append(Step(QAT_STEP[0], QAT_STEP[1], score, time.perf_counter() - t0, kept,
                              note if kept else f"{note}; no gain: not kept"))
            if kept:
                best, best_score = q, score
    fallback = None
    if best_score < goal and allow_cpu_fallback:  # layers to float: on the PTQ model (a QAT model cannot re-export)
        moved, moved_score, moved_layers, step = _cpu_fallback(ptq_best, goal, target, calib_data, metric)
        if any(is_qdq(n) for n in moved.model.graph.node):
            best, best_score, fallback = moved, moved_score, moved_layers
        else:  # an unreachable target moved every layer: a float model, which `compile` refuses (a build failed)
            step.kept = False
            step.note = "every quantized layer would run in float on the CPU, nothing on the accelerator: not kept"
        steps.append(step)
    return AutoResult(best, best_cfg, best_score, goal, best_score >= goal, steps, fallback)


def _score(q: QuantizedModel, metric: Metric | None) -> float:
    if metric is not None:
        return float(metric(q))
    values = [v for v in (q.report.judged_similarity() or q.report.outputs).values() if v is not None]
    return min(values) if values else 0.0


def _qat(step: QatStep, start: QuantizedModel, calib_data: Any) -> tuple[QuantizedModel, str]:
    """The QAT step from ``start``; its model's accuracy check (similarity and label warnings) measured
    again, on the same samples as every other step's."""
    from ..quant.report import judge_outputs
    from .compare import open_samples

    q, note = step(start)
    feeds = list(open_samples(calib_data, start.float_model, samples=start.config.similarity_samples))
    judge_outputs(q.report, start.float_model, q.model, feeds, start.config.max_label_change,
                  min_output_cosine=start.config.min_output_cosine,
                  min_output_snr_db=start.config.min_output_snr_db)
    return q, note


#: The config keys the calibration search sets: what the finetune rungs may take back.
_RANGE_KEYS = ("activation", "percentile_candidates")


def _range_keys(cfg: dict) -> dict:
    """The range keys ``cfg`` sets."""
    return {k: copy.deepcopy(cfg[k]) for k in _RANGE_KEYS if k in cfg}


def _with_ranges(cfg: dict, ranges: dict) -> dict:
    """``cfg`` with its range keys replaced by ``ranges`` (a key absent there is removed)."""
    return {**{k: v for k, v in cfg.items() if k not in _RANGE_KEYS}, **copy.deepcopy(ranges)}


def _finetune_starts(best: QuantConfig, pre_search: dict | None, patch: dict,
                     tgt: Target) -> list[tuple[str, QuantConfig]]:
    """The configurations a finetune rung runs: on the finetune default activation ranges, and on
    the ranges the best model so far used when those differ.

    Learned rounding re-fits each layer to its quantized inputs, so the activation positions that
    suit it are not the ones that suit round-to-nearest (on power-of-two targets finetuning defaults
    to MSE positions, ``quant/config.py``), and which start wins differs from model to model
    (docs/accuracy.md, "Activation positions for fast finetune")."""
    current = best.model_dump(exclude_unset=True)
    default = QuantConfig.model_validate(_merge(current if pre_search is None else _with_ranges(current, pre_search), patch))
    used = best.resolve(tgt, "activation")
    same = QuantConfig.model_validate(_merge(current, {**patch, "activation": {"method": used.method}}))
    starts = [("finetune default ranges", default)]
    if same.resolve(tgt, "activation") != default.resolve(tgt, "activation"):
        starts.append((f"ranges of the best model so far ({used.method})", same))
    return starts


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _cpu_fallback(q: QuantizedModel, goal: float, target: Any, calib_data: Any, metric: Metric | None):
    """Fewest layers in float on the CPU until the similarity target holds, with the latency cost."""
    from . import mixed_precision
    from .compare import open_samples

    t0 = time.perf_counter()
    feeds = list(open_samples(calib_data, q.float_model, samples=q.config.similarity_samples))
    result = mixed_precision.search(q, feeds, min_similarity=goal)
    cost = mixed_precision.perf_cost(q.float_model, target, result.changes)
    quantized = result.quantized
    score = result.score if metric is None else float(metric(quantized))
    fallback = {"layers": sorted(result.changes), **cost}
    step = Step("CPU fallback", f"{len(result.changes)} layer(s) in float on the CPU "
                f"(estimated latency {cost['latency_ms']:.2f} -> {cost['mixed_latency_ms']:.2f} ms)",
                score, time.perf_counter() - t0, True,
                "searched on output similarity; the metric checked after" if metric is not None else "")
    return quantized, score, fallback, step
