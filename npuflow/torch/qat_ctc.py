"""A line-aligned distillation loss for text recognisers (``loss="ctc"`` of
:func:`npuflow.torch.onnx_qat.qat_onnx`): CTC on the FP32 teacher's greedy decodes, beside the
per-step KL.

Why: a recogniser's ``(N, T, C)`` output is mostly confident blank steps; the per-step KL averaged
over all ``T`` steps (``kl_probs``) carries little about the few steps that decide a character,
and on PP-OCRv4 rec it stayed flat while line accuracy random-walked (docs/qat.md).  CTC on the
line FP32 reads -- argmax per step, repeats merged, the blank dropped, the decode the guard and
the benchmarks score (:func:`npuflow.quant.output_kinds.ctc_greedy_sequences`) -- weighs every
line by whether the student can still read it, whatever the alignment.  The KL stays beside it
(weight :data:`KL_WEIGHT`) so the distribution over the steps does not drift where CTC is
indifferent (which of two steps carries a character, the blanks' confidence).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import NpuflowError

#: the CTC blank class: PaddleOCR's, rapidocr's and CRNN's convention, and the guard's decoder's
BLANK = 0

#: weight of the per-step KL beside the CTC term in ``loss="ctc"``
KL_WEIGHT = 1.0


def check_ctc_output(name: str, shape: Sequence[object]) -> None:
    """``NPF_QAT_BAD_OPTION`` unless the output ``name`` has three axes (N, T, C): CTC needs a
    sequence of class rows per sample.  ``shape`` may hold symbolic dimensions; only its rank counts."""
    if len(shape) != 3:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="loss", value="ctc",
                           reason=f"output {name!r} has shape {tuple(shape)}; CTC needs (N, T, C) class rows "
                                  "per step (a text recogniser's output)")


def greedy_labels(teacher: torch.Tensor, blank: int = BLANK) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's greedy CTC decode of each sample of ``teacher`` (N, T, C) as ``F.ctc_loss``
    targets: the labels of all samples concatenated, and each sample's label count (0: an empty
    line).  Argmax per step, repeats merged, ``blank`` dropped."""
    best = teacher.argmax(dim=-1)  # (N, T)
    keep = best != blank
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    return best[keep].long(), keep.sum(dim=1).long()


def ctc_term(student: torch.Tensor, teacher: torch.Tensor, probs: bool, blank: int = BLANK) -> torch.Tensor:
    """CTC of the student's (N, T, C) output on the teacher's greedy decodes, per label and averaged
    over the samples (``F.ctc_loss`` ``mean``); ``probs``: the output is probabilities (a softmax in
    the model: their clamped log), else logits (log-softmax).  Infeasible alignments count 0
    (``zero_infinity``) instead of ending training with an infinite loss."""
    s = student.float()
    log_probs = s.clamp_min(1e-8).log() if probs else F.log_softmax(s, dim=-1)
    targets, lengths = greedy_labels(teacher.detach(), blank)
    n, steps, _ = s.shape
    inputs = torch.full((n,), steps, dtype=torch.long)
    return F.ctc_loss(log_probs.transpose(0, 1), targets.to(s.device), inputs.to(s.device), lengths.to(s.device),
                      blank=blank, reduction="mean", zero_infinity=True)
