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

    def to_dict(self) -> dict:
        return asdict(self)


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
    return SplitReport(metric_name or "metric", base, all_w, all_a, rows)

