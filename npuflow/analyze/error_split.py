"""Weights or activations: which half of each layer's quantization the error comes from (issue 18).

:mod:`.sensitivity` puts a whole layer in float (weights, bias and output together), through plan
overrides re-exported from the calibration statistics.  That says *where* the error is, not *what*
it is: a layer whose weights round badly wants more reconstruction, one whose activation grid is
too coarse (a power-of-two range twice too wide) wants another range; the remedies differ.  This
module scores the two halves apart, on the finished QDQ model itself (its weights are the final
ones, after bias correction and fast finetune, which an export from statistics would not keep):

* **weights float**: a weighted layer (Conv/Gemm/MatMul) reads the float model's weight and bias,
  its input and output stay quantized;
* **activation float**: one activation quantize step removed (its readers read the float value it
  quantized), every weight stays quantized.

``group(name)`` puts several layers or tensors in one variant (e.g. a network's blocks: scoring a
block's weights at once costs one run instead of three).  Each variant costs one run of the model
over the feeds.  The weights restored are the float model's, so after cross-layer equalisation
(``include_cle``) a layer alone in float is no longer matched to its equalised neighbours; read
such a split by blocks that hold both partners.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import onnx
from onnx import helper, numpy_helper

from ..graph import get_array
from ..quant.algorithms.layers import weight_layers
from ..quant.algorithms.qdq_weights import quantized_layers
from ..quant.pipeline import QuantizedModel
from .compare import activation_points
from .sensitivity import Metric, similarity_metric

log = logging.getLogger(__name__)

WEIGHTS, ACTIVATION = "weights", "activation"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def weight_names(qmodel: onnx.ModelProto) -> list[str]:
    """The weighted layers of ``qmodel`` (node names, graph order) whose weight is quantized."""
    return [ql.node.name for ql in quantized_layers(qmodel)]


def activation_names(qmodel: onnx.ModelProto) -> list[str]:
    """The tensors of ``qmodel`` an activation quantize step reads (graph order, each once)."""
    return list(dict.fromkeys(p.q.input[0] for p in activation_points(qmodel)))


def weights_float(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, layers: Iterable[str]) -> onnx.ModelProto:
    """``qmodel`` with the named weighted layers reading ``float_model``'s weight and bias (same
    node names); a name with no float counterpart is an error, not a silent no-op."""
    out = _copy(qmodel)
    floats = {fl.name: fl for fl in weight_layers(float_model)}
    wanted = set(layers)
    missing = wanted - set(floats)
    if missing:
        raise ValueError(f"no float weight for layer(s) {', '.join(sorted(missing))}")
    for ql in quantized_layers(out):
        if ql.node.name not in wanted:
            continue
        fl = floats[ql.node.name]
        sources = [(1, fl.weight)] + ([(2, fl.bias)] if fl.bias is not None and len(ql.node.input) > 2 else [])
        for index, source in sources:
            name = f"{ql.node.name}.float_input{index}"
            out.graph.initializer.append(numpy_helper.from_array(get_array(float_model, source), name))
            ql.node.input[index] = name
    return out


def activations_float(qmodel: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """``qmodel`` with the quantize steps of the named tensors removed: each dequantize step
    becomes an Identity of the float tensor (graph outputs keep their names), and the quantize
    steps are dropped."""
    out = _copy(qmodel)
    wanted = set(tensors)
    points = [p for p in activation_points(out) if p.q.input[0] in wanted]
    missing = wanted - {p.q.input[0] for p in points}
    if missing:
        raise ValueError(f"no activation quantize step on tensor(s) {', '.join(sorted(missing))}")
    drop = set()
    for p in points:
        identity = helper.make_node("Identity", [p.q.input[0]], [p.dq.output[0]], name=f"{p.dq.name}.float")
        p.dq.CopyFrom(identity)
        drop.add(id(p.q))
    kept = [n for n in out.graph.node if id(n) not in drop]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


@dataclass
class SplitRow:
    group: str
    kind: str            # WEIGHTS or ACTIVATION
    members: list[str]   # the layers (weights) or tensors (activation) put in float
    score: float
    gain: float          # score - quantized score


@dataclass
class SplitReport:
    metric: str
    quantized_score: float
    all_weights_float: float
    all_activations_float: float
    rows: list[SplitRow] = field(default_factory=list)  # largest gain first
    #: the fast finetune method that learned the weights (None: rounded to nearest); it changes
    #: how the two halves read (:func:`reading`)
    fast_finetune: str | None = None
    #: cross-layer equalisation ran: the restored float weights are the unequalised ones
    include_cle: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _decimals(report: SplitReport) -> int:
    """Decimals that show gains at the quantized score's distance from 1 (an int8 MNIST at
    0.99993 moves in the 6th decimal; 5 fixed decimals printed every gain as +0.00000)."""
    gap = 1.0 - report.quantized_score
    return 5 if gap <= 0 else min(8, max(5, math.ceil(-math.log10(gap)) + 2))


def reading(report: SplitReport) -> str:
    """What the two all-float scores say, in one sentence.  Removing one half can lower the score
    even when nothing was learned (PP-OCR's direction classifier on B4096, random inputs: all
    activations float -0.0128, all weights float +0.0015): the sentence then says the halves
    interact.  After fast finetune the weights were fitted to the quantized activations, so the
    halves depend on each other and a removal can lower the score (docs/accuracy.md,
    EfficientNet-Lite0 after AdaRound): then the split says how much the reconstruction leans on
    each half, not where the error comes from."""
    w = report.all_weights_float - report.quantized_score
    a = report.all_activations_float - report.quantized_score
    d = _decimals(report)
    if report.include_cle:
        return ("cross-layer equalisation rescaled neighbouring layers and the activation ranges between them, "
                "and the float weights restored are the unequalised ones: the weight scores include that "
                "mismatch (quantize with include_cle: false to split the error).")
    if report.fast_finetune:
        return (f"fast finetune ({report.fast_finetune}) fitted the weights to the quantized activations, so the "
                f"halves depend on each other: a gain measures that fit, not where the error comes from (a negative "
                f"one: the learned weights lean on that half's quantization); quantize without fast_finetune to "
                f"locate the error.")
    if max(w, a) <= 0:
        return ("neither half alone recovers the quantized score: the error comes from the two together "
                "(or the score is at its noise floor: score more samples).")
    lead, other, gain, loss = ("weights", "activations", w, a) if w >= a else ("activations", "weights", a, w)
    work = ("their rounding first (fast_finetune, the weight rows on top), before the activation ranges"
            if lead == "weights" else
            "their ranges first (calibration method, the activation rows on top), before the weight rounding")
    interact = (f"; removing the {other}' quantization everywhere loses more than that, so the halves interact "
                f"and the one-at-a-time rows guide better than the totals" if -loss > gain else "")
    return (f"the {lead} are the larger half of the error ({gain:+.{d}f} against {loss:+.{d}f}): work on "
            f"{work}{interact}.")


def summary_lines(report: SplitReport) -> list[str]:
    """The two all-float scores with their gains, then :func:`reading`."""
    d = _decimals(report)
    lines = [f"{label + ':':<23}{value:.{d}f} ({value - report.quantized_score:+.{d}f})"
             for label, value in (("all weights float", report.all_weights_float),
                                  ("all activations float", report.all_activations_float))]
    return lines + [reading(report)]


def rich_table(report: SplitReport, top: int | None = None):
    """The rows as a Rich table, largest gain first (``top``: only the first ``top``)."""
    from rich.table import Table

    d = _decimals(report)
    t = Table(title=f"Weights or activations, one in float at a time ({report.metric}; "
                    f"quantized {report.quantized_score:.{d}f})")
    for col in ("rank", "kind", "layer or tensor", "score", "gain"):
        t.add_column(col, justify="left" if col in ("kind", "layer or tensor") else "right")
    for i, r in enumerate(report.rows[:top] if top else report.rows, 1):
        name = r.group if r.members == [r.group] else f"{r.group} ({len(r.members)})"
        t.add_row(str(i), r.kind, name, f"{r.score:.{d}f}", f"{r.gain:+.{d}f}")
    return t


def _groups(names: Sequence[str], group: Callable[[str], str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(group(name), []).append(name)
    return out


def split(
    quantized: QuantizedModel,
    feeds: Iterable | None = None,
    metric: Metric | None = None,
    metric_name: str | None = None,
    group: Callable[[str], str] = lambda name: name,
    progress: Callable[[str, int, int], None] | None = None,
) -> SplitReport:
    """Score every group's weights-float and activation-float variant of ``quantized.model``
    (module docstring); ``metric(model)`` higher is better, by default the lowest output cosine to
    the float model over ``feeds`` (:func:`.sensitivity.similarity_metric`)."""
    if metric is None:
        if feeds is None:
            raise ValueError("the error split needs evaluation feeds or a metric")
        metric = similarity_metric(quantized.float_model, feeds)
        metric_name = metric_name or "lowest output cosine similarity"
    qmodel, fmodel = quantized.model, quantized.float_model
    layers, tensors = weight_names(qmodel), activation_names(qmodel)
    base = metric(qmodel)
    all_w = metric(weights_float(qmodel, fmodel, layers))
    all_a = metric(activations_float(qmodel, tensors))
    todo = [(WEIGHTS, g, m) for g, m in _groups(layers, group).items()]
    todo += [(ACTIVATION, g, m) for g, m in _groups(tensors, group).items()]
    rows = []
    for i, (kind, name, members) in enumerate(todo, 1):
        model = weights_float(qmodel, fmodel, members) if kind == WEIGHTS else activations_float(qmodel, members)
        score = metric(model)
        rows.append(SplitRow(name, kind, members, score, score - base))
        if progress:
            progress(f"{kind} {name}", i, len(todo))
    rows.sort(key=lambda r: (-round(r.gain, 12), r.kind, r.group))
    log.info("error split: quantized %.5f, all weights float %.5f, all activations float %.5f", base, all_w, all_a)
    finetune = quantized.config.fast_finetune
    return SplitReport(metric_name or "metric", base, all_w, all_a, rows,
                       fast_finetune=finetune.method if finetune is not None else None,
                       include_cle=quantized.config.include_cle)

