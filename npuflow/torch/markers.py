"""Markers that carry trained quantization parameters through ``torch.onnx.export``.

While a QAT model is exported, each quantizer records what it computes (scale, zero point,
integer format, and for weights and biases the integer codes themselves) in the active
:class:`ExportRecorder` and wraps its tensor in :class:`QuantMarker`, which the TorchScript ONNX
exporter writes as a ``npuflow_qat::Q`` node with a ``key`` attribute.  The export pass
(:mod:`npuflow.torch.export`) then replaces every marker with the quantizer's documented QDQ form
using exactly the recorded values, so the file holds the trained parameters, not re-derived ones.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..fake_quant import QuantSpec

MARKER_DOMAIN = "npuflow_qat"
MARKER_OP = "Q"


@dataclass
class QuantRecord:
    """One quantize step as the QAT forward computed it."""

    kind: str  # "activation" | "weight" | "bias"
    name: str
    spec: QuantSpec
    scale: np.ndarray  # float32, scalar or per channel
    zero_point: np.ndarray  # int, same shape as scale
    axis: int | None = None
    codes: np.ndarray | None = None  # integer codes of a constant (weights, biases)


class ExportRecorder:
    """Collects :class:`QuantRecord` objects keyed by marker id during one export."""

    def __init__(self) -> None:
        self.records: list[QuantRecord] = []

    def add(self, record: QuantRecord) -> int:
        self.records.append(record)
        return len(self.records) - 1


_ACTIVE: list[ExportRecorder] = []


def active_recorder() -> ExportRecorder | None:
    """The recorder of the export in progress, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def recording():
    rec = ExportRecorder()
    _ACTIVE.append(rec)
    try:
        yield rec
    finally:
        _ACTIVE.pop()


class QuantMarker(torch.autograd.Function):
    """Identity in torch; a ``npuflow_qat::Q(key)`` node in the exported ONNX graph."""

    @staticmethod
    def forward(ctx, x, key: int):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def symbolic(g, x, key: int):
        out = g.op(f"{MARKER_DOMAIN}::{MARKER_OP}", x, key_i=key)
        out.setType(x.type())
        return out


def mark(x: torch.Tensor, record: QuantRecord) -> torch.Tensor:
    """Record ``record`` in the active export and return the marked tensor."""
    rec = active_recorder()
    if rec is None:
        return x
    return QuantMarker.apply(x, rec.add(record))
