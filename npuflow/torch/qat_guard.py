"""Keep the better of the PTQ start and the trained model (:func:`npuflow.torch.onnx_qat.qat_onnx`).

What decides is what the user deploys and what the user measures:

* **the deployed model**: each candidate is exported to its QDQ model (:func:`export_qat`) and run
  in ONNX Runtime, not judged by the torch forward;
* **on samples held out of training**, against the FP32 model's outputs on them;
* **on the task's own measure** (:mod:`npuflow.quant.agreement`, shared with the fast-finetune
  restarts): an output whose last axis is a class or probability axis (the
  rule of the distillation loss: probability rows, or ``(N, C)`` logits) is judged by argmax
  agreement with FP32 per row -- per CTC step for a text recogniser's ``(N, T, C)``
  probabilities (per greedy-decoded line on a guard of :data:`SEQUENCE_GUARD_SAMPLES` or more,
  below), per sample for a classifier -- any other output by its mean output cosine.
  With several outputs the score is the mean of their measures.  A caller's ``metric`` replaces
  the measure.  A trained model replaces the start only when it leads by more than one held-out
  row (:func:`choose`).

Why: on PP-OCRv4 rec the mean output cosine over CTC probability rows, mostly blank, moved
against line accuracy (a trained model with the higher cosine read 16 points fewer lines; one
with the lower cosine read more), while the argmax per step is what the decoder reads.

For a recogniser's ``(N, T, C)`` probabilities the judgement also carries the **sequence
agreement**: the fraction of held-out samples whose greedy CTC decode (:func:`ctc_greedy_sequences`)
equals FP32's -- what a user reading whole lines sees.  It decides once the guard holds at least
:data:`SEQUENCE_GUARD_SAMPLES` samples, and is reported below that: on the few dozen lines a guard
holds out by default one line is a coarse step (PP-OCRv4 rec, 51 lines: it ranked a trained model
that reads 4 points fewer evaluation lines above the start), while on 200 lines it ordered five
rec models exactly as their line accuracy on 200 other lines, which the per-step agreement did not
(blank steps dominate it, and a character read one step earlier changes it but not the line;
docs/qat.md has both comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from ..quant.agreement import SEQUENCE, Reference, joint_cosine
from ..errors import NpuflowError
from ..ort_session import open_session
from ..quant.data import Sample
from .qat_train import as_list

#: held-out samples from which a recogniser's sequence agreement, not its per-step agreement,
#: decides: one line is then at most half a point of the measure
SEQUENCE_GUARD_SAMPLES = 200

#: the least denominator of the guard's cosines (:func:`npuflow.quant.agreement.cosine`)
_COSINE_FLOOR = 1e-12

#: ``metric(outputs) -> float``, higher is better: ``outputs`` holds, for every held-out sample in
#: order, the list of the model's outputs (numpy arrays, in the graph's output order).
Metric = Callable[[list[list[np.ndarray]]], float]


@dataclass(frozen=True)
class Judgement:
    """How one candidate (the PTQ start or the trained model) did on the held-out samples."""

    score: float  # what decides (higher is better): the measure, or the caller's metric
    cosine: float  # mean per-sample cosine of all outputs flattened together, to FP32
    agreement: float | None  # argmax agreement with FP32 over the class rows; None: no class output
    sequences: float | None = None  # share of samples whose greedy CTC decodes equal FP32's; None: no (N, T, C) rows
    #: what one held-out row changes the score by (argmax agreement over R rows: 1/R); 0 for a
    #: continuous measure (output cosine) or a caller's metric
    resolution: float = 0.0


class Guard:
    """The FP32 outputs of the held-out samples, computed once, and the judge of candidates."""

    def __init__(self, float_model: onnx.ModelProto, samples: Sequence[Sample], input_names: Sequence[str],
                 output_names: Sequence[str], metric: Metric | None = None, by_line: bool | None = None) -> None:
        """``by_line``: whether a recogniser's greedy-decoded lines decide (None: from
        :data:`SEQUENCE_GUARD_SAMPLES` samples on)."""
        session = open_session(float_model, level="all", threads=1)
        self.feeds = [{n: s[n] for n in input_names} for s in samples]
        self.outputs = list(output_names)
        self.reference = Reference([session.run(self.outputs, f) for f in self.feeds],
                                   by_line=len(self.feeds) >= SEQUENCE_GUARD_SAMPLES if by_line is None else by_line,
                                   cosine_floor=_COSINE_FLOOR)
        kinds = self.reference.kinds
        self.sequence_outputs = [k for k, kind in enumerate(kinds) if kind.sequence]
        #: the outputs judged by whole greedy-decoded lines (a guard large enough for it)
        self.by_line = [k for k, kind in enumerate(kinds) if kind.measure == SEQUENCE]
        self.metric = metric
        measures = {kind.measure for kind in kinds}
        self.measure = "metric" if metric is not None else (
            measures.pop() if len(measures) == 1 else f"mean of {' and '.join(sorted(measures))} over the outputs")

    def judge(self, qdq: onnx.ModelProto) -> Judgement:
        """Run ``qdq`` (a candidate's exported QDQ model) in ONNX Runtime on the held-out samples."""
        session = open_session(qdq, threads=1)
        return self._judge([session.run(self.outputs, f) for f in self.feeds])

    def watch(self, module: torch.nn.Module, names: Sequence[str], batch: int = 1) -> float:
        """The deciding score of ``module``'s own forward (eval mode, on the device its parameters
        are on, ``batch`` samples a forward) on the held-out samples: the progress check during
        training, which costs no export."""
        device = next(module.parameters()).device
        module.eval()
        got: list[list[np.ndarray]] = []
        with torch.no_grad():
            for i in range(0, len(self.feeds), batch):
                chunk = self.feeds[i:i + batch]
                outs = as_list(module(*(torch.from_numpy(np.concatenate([f[n] for f in chunk])).to(device)
                                         for n in names)))
                outs = [o.float().cpu().numpy() for o in outs]
                got += [[o[j:j + 1] for o in outs] for j in range(len(chunk))]
        return self._judge(got).score

    def _judge(self, got: list[list[np.ndarray]]) -> Judgement:
        per_output = self.reference.compare(got, cosines=False)  # the guard's cosine is joint_cosine's
        rows = [a.rows for a in per_output if a.rows is not None]
        lines = [same for a in per_output if a.lines is not None for same in a.lines]
        steps = [1.0 / a.counted for a in per_output if a.counted]  # what one row changes each discrete measure by
        score = self._metric(got) if self.metric is not None else float(np.mean([a.score for a in per_output]))
        resolution = 0.0 if self.metric is not None or not steps else max(steps) / len(per_output)
        return Judgement(score=score, cosine=joint_cosine(got, self.reference.fp32, _COSINE_FLOOR),
                         agreement=float(np.concatenate(rows).mean()) if rows else None,
                         sequences=float(np.mean(lines)) if lines else None, resolution=resolution)

    def _metric(self, outputs: list[list[np.ndarray]]) -> float:
        value = self.metric(outputs)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(value)):
            raise NpuflowError("NPF_QAT_BAD_METRIC", value=repr(value)[:80])
        return float(value)


def choose(candidates: Sequence[tuple[str, Judgement | None]], start: str = "ptq start") -> str:
    """The name of the candidate to return: a trained one (the earlier in ``candidates`` on a tie)
    when its score beats ``start``'s by more than one held-out row (:attr:`Judgement.resolution`;
    on a continuous measure, when it is higher at all), else ``start``.

    Why a margin: on PP-OCRv4 rec the guard's 51 held-out lines (about 2,000 CTC steps) returned
    a trained model on a tie (85.5 % lines against the start's 88.0 %) and a weight average one
    step ahead (83.5 % against 87.0 %); the one trained model that read more lines (90.5 % against
    88.0 %) was ahead by three steps.  A lead of one row is a coin flip; the PTQ start is the model
    whose accuracy the user has measured (None: not a candidate in this run)."""
    present = [(name, j) for name, j in candidates if j is not None]
    base = dict(present)[start]
    best_name, best = start, None
    for name, j in present:
        if name != start and (best is None or j.score > best.score):
            best_name, best = name, j
    return best_name if best is not None and best.score > base.score + base.resolution * (1 + 1e-9) else start
