"""Per-layer quantization sensitivity (AIMET's QuantAnalyzer, Horizon's per-node similarity).

For every weight layer of a quantized model two variants are scored against the float model:

* **float only this layer** (everything else quantized): how much of the total loss the layer
  is responsible for; the ranking key, since keeping the top layers in higher precision is the
  remedy mixed precision applies.  A float layer's output stays quantized where an integer
  layer reads it (as on the chip), so a weightless op between two integer layers would gain
  nothing alone: its variant puts the layers reading it in float too (``floated_with``);
* **quantize only this layer** (everything else float, the quantize steps of its inputs kept):
  the layer's own damage in isolation.

The score is the cosine similarity of all model outputs to the float model's, pooled over the
evaluation feeds (a per-feed mean scored PP-OCRv4 det's all-background maps, ~1e-10 in float,
0 or 1 at random), or a user metric ``metric(model) -> float`` (higher is better).  Variants are
built by editing the QDQ model (:mod:`npuflow.analyze.qdq_edit`), so nothing is re-calibrated,
and the ranking is deterministic (ties broken by layer name).

Each layer costs two runs of the model over the feeds (YOLOv8n: ~120 layers, minutes), so the
work is bounded: ``order`` scores the likeliest layers first (the CLI passes the quantizer's
per-node similarity drops), and once ``time_budget`` seconds are spent the remaining layers are
left out and listed in ``SensitivityReport.skipped``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from ..quant.algorithms.graph import Feed, run_outputs
from .qdq_edit import apply_precisions, float_groups, layer_points

log = logging.getLogger(__name__)

Metric = Callable[[onnx.ModelProto], float]


def cosine(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Cosine similarity of two lists of output tensors, flattened and concatenated."""
    x = np.concatenate([np.asarray(t, np.float64).ravel() for t in a])
    y = np.concatenate([np.asarray(t, np.float64).ravel() for t in b])
    den = np.linalg.norm(x) * np.linalg.norm(y)
    return float(np.dot(x, y) / den) if den > 0 else float(np.array_equal(x, y))


def similarity_metric(float_model: onnx.ModelProto, feeds: Iterable[Feed]) -> Metric:
    """``metric(model)``: output cosine similarity to ``float_model``, pooled over the feeds."""
    feeds = list(feeds)
    ref = [t for outputs in run_outputs(float_model, feeds) for t in outputs]

    def metric(model: onnx.ModelProto) -> float:
        return cosine([t for outputs in run_outputs(model, feeds) for t in outputs], ref)

    return metric


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


def analyze(
    float_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    feeds: Iterable[Feed] | None = None,
    metric: Metric | None = None,
    metric_name: str | None = None,
    layers: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    quant_only: bool = True,
    order: Sequence[str] = (),
    time_budget: float | None = None,
) -> SensitivityReport:
    """Score every weight layer (or the named ``layers``); returns them most sensitive first.

    ``quant_only=False`` skips the "quantize only this layer" variant (reported as None), halving
    the cost when only the ranking is needed (the mixed-precision search).  ``order``: layers
    scored first (the rest follow in graph order); ``time_budget``: seconds after which no
    further layer is started (those left are in ``skipped``).
    """
    if metric is None:
        if feeds is None:
            raise ValueError("sensitivity analysis needs evaluation feeds or a metric")
        metric = similarity_metric(float_model, feeds)
        metric_name = metric_name or "output cosine similarity"
    op_types = {lp.name: lp.op_type for lp in layer_points(qmodel)}
    groups = float_groups(qmodel)
    names = list(op_types)
    if layers is not None:
        wanted = set(layers)
        names = [n for n in names if n in wanted]
    wanted_first = set(order)
    names = [n for n in dict.fromkeys(order) if n in names] + [n for n in names if n not in wanted_first]
    start = time.monotonic()
    base = metric(qmodel)
    fscore = metric(float_model)
    result = []
    skipped: list[str] = []
    for k, name in enumerate(names):
        if time_budget is not None and time.monotonic() - start > time_budget:
            skipped = names[k:]
            log.info("sensitivity: time budget of %.0f s spent after %d of %d layers; %d not scored",
                        time_budget, k, len(names), len(skipped))
            break
        if progress:
            progress(name, k, len(names))
        group = groups.get(name, [name])
        f_only = metric(apply_precisions(qmodel, {n: "float" for n in group}, float_model))
        q_only = (metric(apply_precisions(qmodel, {}, float_model, quantize_only=name))
                  if quant_only else None)
        result.append(LayerSensitivity(name, op_types[name], f_only, q_only, f_only - base, group[1:]))
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
