"""Per-layer quantization sensitivity (AIMET's QuantAnalyzer, Horizon's per-node similarity).

For every layer of a quantization plan (:class:`npuflow.quant.plan.Layer`: a weighted layer with
the activations fused into it, or a weightless op with a quantize step of its own) two variants
are scored against the float model:

* **float only this layer** (everything else quantized): how much of the total loss the layer
  is responsible for; the ranking key, since keeping the top layers in higher precision is the
  remedy mixed precision applies.  A float layer's output stays quantized where an integer
  layer reads it (as on the chip), so a weightless op between two integer layers would gain
  nothing alone: its variant puts the layers reading it in float too (``floated_with``);
* **quantize only this layer** (everything else float, the quantize steps of its inputs kept):
  the layer's own damage in isolation.

The score is the lowest model output's cosine similarity to the float model's, each output pooled
over the evaluation feeds (as the quantizer's accuracy check judges; a per-feed mean scored PP-OCRv4 det's all-background maps, ~1e-10 in float,
0 or 1 at random), or a user metric ``metric(model) -> float`` (higher is better).  Variants are
plan overrides exported from the statistics the quantizer collected
(:meth:`npuflow.quant.requantize.Requantizer.export`), so nothing is re-calibrated, a variant
is the model ``quantize`` builds with the same ``keep_float``, and the ranking is deterministic
(ties broken by layer name).  CPU-placed nodes are no layers: they run in float already.

Each layer costs two runs of the model over the feeds (YOLOv8n: ~120 layers, minutes), so the
work is bounded: ``order`` scores the likeliest layers first (the CLI passes the quantizer's
per-node similarity drops), and once ``time_budget`` seconds are spent the remaining layers are
left out and listed in ``SensitivityReport.skipped``.

The layers are independent tasks: ``workers`` > 1 scores them in a local process pool, and
``ray_address`` as Ray tasks (:func:`npuflow.scaleout.map_tasks`; the models, the feeds and the
float model's outputs go to each worker once).  The report is the serial one — same layers,
same floats, same order — except where a time budget runs out: a parallel run decides when
it *submits* a layer, up to two per worker ahead of the serial run's decision.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from .. import scaleout
from ..errors import NpuflowError
from ..quant.algorithms.capture import Feed, run_outputs
from ..quant.pipeline import QuantizedModel
from ..quant.requantize import Requantizer
from ..quant import agreement

log = logging.getLogger(__name__)

Metric = Callable[[onnx.ModelProto], float]


def cosine(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Cosine similarity of two lists of output tensors, flattened and concatenated (the one cosine,
    :func:`.agreement.cosine`, without a floor: two all-zero outputs are equal, a NaN output scores 0)."""
    return agreement.cosine(np.concatenate([np.asarray(t, np.float64).ravel() for t in a]),
                            np.concatenate([np.asarray(t, np.float64).ravel() for t in b]))


def lowest_output_cosine(outputs: Sequence[Sequence[np.ndarray]], reference: Sequence[Sequence[np.ndarray]]) -> float:
    """The lowest model output's cosine similarity to ``reference``, each output pooled over the
    feeds (``outputs[feed][output]``).  Judged per output, as the quantizer's accuracy check does:
    pooled across outputs, a large-valued output hid a poor one (a pose model's keypoints at 1.0
    hid its heatmaps at 0.99956 against a 0.9999 target)."""
    per_output = zip(*outputs, strict=True)
    per_reference = zip(*reference, strict=True)
    return min((cosine(got, ref) for got, ref in zip(per_output, per_reference, strict=True)), default=1.0)


class SimilarityMetric:
    """``metric(model)``: the lowest output's cosine similarity to the float model, each output
    pooled over the feeds (a class, not a closure, so that it travels to sweep workers with its
    reference outputs)."""

    def __init__(self, float_model: onnx.ModelProto, feeds: Iterable[Feed]) -> None:
        self.feeds = list(feeds)
        self.reference = [list(outputs) for outputs in run_outputs(float_model, self.feeds)]
        #: False in sweep workers, which share the cores: idle ONNX Runtime threads sleep
        self.spinning = True

    def __call__(self, model: onnx.ModelProto) -> float:
        return lowest_output_cosine(run_outputs(model, self.feeds, spinning=self.spinning), self.reference)


def similarity_metric(float_model: onnx.ModelProto, feeds: Iterable[Feed]) -> Metric:
    """``metric(model)``: the lowest output's cosine similarity to ``float_model``, each pooled over the feeds."""
    return SimilarityMetric(float_model, feeds)


#: One variant of the quantized model: ``(precision changes as (layer, precision) pairs,
#: the one layer left quantized or None)``.
Variant = tuple[tuple[tuple[str, str], ...], "str | None"]


def overrides_of(requantizer: Requantizer, variant: Variant) -> dict[str, str]:
    """The plan overrides of ``variant``: its changes, or every layer but the one left quantized in float."""
    changes, only = variant
    if only is None:
        return dict(changes)
    return {name: "float" for name in requantizer.layers if name != only}


def score_variants(context: dict, variants: Sequence[Variant]) -> list[float]:
    """A sweep task: the metric of each variant, exported with its plan overrides.

    ``context``: ``requantizer`` and ``metric`` (shared by every task of a sweep)."""
    rq, metric = context["requantizer"], context["metric"]
    return [metric(rq.export(overrides_of(rq, v))) for v in variants]


def _score_layer(context: dict, item: tuple[str, list[Variant]]) -> tuple[str, list[float]]:
    """A sensitivity task: one layer's variants."""
    return item[0], score_variants(context, item[1])


def requantizer_of(quantized: QuantizedModel) -> Requantizer:
    """The quantization's :class:`~npuflow.quant.requantize.Requantizer`."""
    if quantized.requantizer is None:
        raise NpuflowError("NPF_QUANT_NO_PLAN", action="sensitivity and mixed-precision analysis")
    return quantized.requantizer


def sweep_context(quantized: QuantizedModel, metric: Metric, workers: int, ray_address: str | None) -> dict:
    """What every sweep task needs; a metric for worker processes must pickle."""
    if scaleout.parallel(workers, ray_address):
        scaleout.require_picklable(metric, "the metric")
        if isinstance(metric, SimilarityMetric):
            metric = copy.copy(metric)
            metric.spinning = False
    return {"requantizer": requantizer_of(quantized), "metric": metric}


def float_groups(requantizer: Requantizer) -> dict[str, list[str]]:
    """Weightless layer -> the layers to put in float with it (itself first): the layers reading
    its quantize step.  Alone in float such a layer changes nothing, since its integer readers
    need that step (the CPU -> accelerator boundary ``keep_float`` keeps)."""
    return {name: [name, *layer.readers] for name, layer in requantizer.layers.items()
            if not layer.weighted and layer.readers}


@dataclass
class LayerSensitivity:
    layer: str
    op_type: str
    float_only: float      # score with only this layer in float (with ``floated_with``)
    quant_only: float | None  # score with only this layer quantized (None: not measured)
    gain: float            # float_only - fully quantized score
    floated_with: list[str] = field(default_factory=list)  # weightless layer: its readers, in float with it


@dataclass
class SensitivityReport:
    metric: str
    float_score: float
    quantized_score: float
    layers: list[LayerSensitivity] = field(default_factory=list)  # most sensitive first
    skipped: list[str] = field(default_factory=list)  # not scored: the time budget ran out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def ranking(self) -> list[str]:
        return [l.layer for l in self.layers]

    def group(self, name: str) -> list[str]:
        """The layers ``name``'s float variant put in float: itself and its ``floated_with``."""
        extra = next((l.floated_with for l in self.layers if l.layer == name), [])
        return [name, *extra]


def report_order(quantized: QuantizedModel) -> list[str]:
    """The nodes whose similarity drops most in the quantizer's per-node report, first: the
    likeliest sensitive layers, scored first where a time budget may leave some out."""
    drops = sorted((r for r in quantized.report.rows if r.drop is not None), key=lambda r: (-r.drop, r.node))
    return [r.node for r in drops]


def analyze(
    quantized: QuantizedModel,
    feeds: Iterable[Feed] | None = None,
    metric: Metric | None = None,
    metric_name: str | None = None,
    layers: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    quant_only: bool = True,
    order: Sequence[str] = (),
    time_budget: float | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    pool: scaleout.Workers | None = None,
) -> SensitivityReport:
    """Score every layer of ``quantized``'s plan (or the named ``layers``); most sensitive first.

    ``quant_only=False`` skips the "quantize only this layer" variant (reported as None), halving
    the cost when only the ranking is needed (the mixed-precision search).  ``order``: layers
    scored first (the rest follow in plan order: weighted layers, then weightless ones);
    ``time_budget``: seconds after which no further layer is started (those left are in
    ``skipped``).  ``progress(layer, done, total)`` follows finished layers;
    ``workers``/``ray_address``: see the module docstring; ``pool``: workers already started on
    :func:`sweep_context` (the mixed-precision search shares its own).
    """
    if metric is None:
        if feeds is None:
            raise ValueError("sensitivity analysis needs evaluation feeds or a metric")
        metric = similarity_metric(quantized.float_model, feeds)
        metric_name = metric_name or "lowest output cosine similarity"
    rq = requantizer_of(quantized)
    context = None if pool is not None else sweep_context(quantized, metric, workers, ray_address)
    op_types = {name: layer.op_type for name, layer in rq.layers.items()}
    groups = float_groups(rq)
    names = list(op_types)
    if layers is not None:
        wanted = set(layers)
        names = [n for n in names if n in wanted]
    wanted_first = set(order)
    names = [n for n in dict.fromkeys(order) if n in names] + [n for n in names if n not in wanted_first]
    start = time.monotonic()
    base = metric(rq.export({}))
    fscore = metric(quantized.float_model)
    started: list[str] = []

    def tasks() -> Iterator[tuple[str, list[Variant]]]:
        """Each layer's variants, while the time budget lasts."""
        for name in names:
            if time_budget is not None and time.monotonic() - start > time_budget:
                return
            started.append(name)
            variants: list[Variant] = [(tuple((n, "float") for n in groups.get(name, [name])), None)]
            yield name, variants + ([((), name)] if quant_only else [])

    def report(item: tuple[str, list[Variant]], done: int, total: int | None) -> None:
        if progress:
            progress(item[0], done, len(names))

    result = []
    scores = (pool.map(_score_layer, tasks(), report) if pool is not None else
              scaleout.map_tasks(_score_layer, tasks(), workers, ray_address, report, context=context))
    for name, (f_only, *q_only) in scores:
        group = groups.get(name, [name])
        result.append(LayerSensitivity(name, op_types[name], f_only, q_only[0] if q_only else None, f_only - base,
                                       group[1:]))
    skipped = names[len(started):]
    if skipped:
        log.info("sensitivity: time budget of %.0f s spent after %d of %d layers; %d not scored",
                 time_budget, len(started), len(names), len(skipped))
    result.sort(key=lambda r: (-round(r.gain, 12), r.layer))
    log.info("sensitivity: %d layers, quantized score %.5f, float %.5f", len(result), base, fscore)
    return SensitivityReport(metric_name or "metric", fscore, base, result, skipped)


def rich_table(report: SensitivityReport, top: int | None = None):
    """The ranking as a Rich table (most sensitive first)."""
    from rich.table import Table

    t = Table(title=f"Layer sensitivity ({report.metric}; float {report.float_score:.5f}, "
                    f"quantized {report.quantized_score:.5f})")
    for col in ("rank", "layer", "op", "float only this", "with its readers", "gain", "quantize only this"):
        t.add_column(col, justify="right" if col not in ("layer", "op") else "left")
    for i, l in enumerate(report.layers[:top] if top else report.layers, 1):
        t.add_row(str(i), l.layer, l.op_type, f"{l.float_only:.5f}", f"+{len(l.floated_with)}" if l.floated_with else "",
                  f"{l.gain:+.5f}", "-" if l.quant_only is None else f"{l.quant_only:.5f}")
    return t
