"""Distillation of intermediate features in label-free QAT (``qat_onnx(..., feature_weight=w)``).

Logit distillation alone tells every layer only through the model's output how far it is from
the FP32 model; on a deep network (PP-OCRv4 rec: a CTC output that is mostly blank) that signal
is weak and noisy for the early layers.  Here the teacher -- the FP32 model in ONNX Runtime --
also returns a few intermediate tensors, the student's quantized values of the same ONNX tensors
are read at its activation quantizers, and the loss adds ``w`` times the mean over these points
(and the samples) of the squared error normalised by the variance of the teacher's tensor
(scale-free, so points of very different ranges weigh alike, and ``w`` does not depend on how
many points there are).

Which tensors: the student's activation quantizers whose ONNX tensor the teacher's graph
computes (not a graph input or output, same static shape on both sides) are the candidates, in
the graph's topological order; :data:`FEATURE_POINTS` of them are taken evenly spaced along it
(the ``i``-th at ``(i + 1) / (K + 1)`` of the way), so the early, middle and late parts of the
network each get a direct signal without one stage dominating.  The point is the quantizer's
output: the value the deployed model computes for that tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.fx as fx

from .. import model as model_io
from .. import numerics
from ..errors import NpuflowError
from .ptq_init import onnx_mappings, produced_tensors
from .qat import QatModel
from .quantizer import FakeQuantizer

#: How many intermediate tensors are distilled (fewer when the model has fewer candidates).
FEATURE_POINTS = 4


def check_feature_weight(weight: object) -> float:
    """``weight`` as a float, or ``NPF_QAT_BAD_OPTION`` when it is not a finite number >= 0."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="feature_weight", value=weight,
                           reason="not a finite number >= 0")
    return float(weight)


def select_features(qat: QatModel, converted: fx.GraphModule, teacher: onnx.ModelProto,
                    count: int = FEATURE_POINTS) -> dict[str, str]:
    """ONNX tensor name -> the student's activation quantizer (module path) that quantizes it,
    for ``count`` tensors evenly spaced along the candidates (see the module docstring).
    ``NPF_QAT_BAD_OPTION`` when the model has no candidate."""
    gm = qat.graph_module
    produced = produced_tensors(gm, onnx_mappings(converted))
    computed = {o for n in teacher.graph.node for o in n.output}
    outputs = {o.name for o in teacher.graph.output}
    shapes = model_io.tensor_shapes(teacher)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    candidates: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] != 1:
            continue
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, FakeQuantizer) or mod.weight or not isinstance(node.args[0], fx.Node):
            continue
        tensor = produced.get(node.args[0])
        if tensor is None:
            continue
        meta = node.meta.get("tensor_meta")
        if (tensor in computed and tensor not in outputs and meta is not None
                and shapes.get(tensor) == list(meta.shape) and tensor not in dict(candidates)):
            candidates.append((tensor, str(node.target)))
    if not candidates:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="feature_weight", value="> 0",
                           reason="the model has no quantized intermediate tensor the FP32 model also computes")
    k = min(count, len(candidates))
    # the i-th point at (i + 1) / (k + 1) of the way, ties to even
    spots = numerics.round_values(np.arange(1, k + 1) * len(candidates) / (k + 1), numerics.RoundMode.HALF_EVEN)
    picks = sorted({int(v) - 1 for v in spots}) if k < len(candidates) else list(range(len(candidates)))
    return dict(candidates[max(i, 0)] for i in picks)


class FeatureTap:
    """Reads the student's values at the chosen quantizers during its forward (forward hooks),
    in the order of ``points``; :meth:`close` removes the hooks."""

    def __init__(self, qat: QatModel, points: dict[str, str]) -> None:
        self.names = list(points)
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [qat.graph_module.get_submodule(path).register_forward_hook(self._hook(name))
                        for name, path in points.items()]

    def _hook(self, name: str):  # noqa: ANN202 (a torch hook)
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.values[name] = output
        return hook

    def take(self) -> list[torch.Tensor]:
        """The values of the last forward, in order (cleared, so a forward that skipped a point
        is an error rather than a stale value)."""
        values = [self.values.pop(n) for n in self.names]
        self.values.clear()
        return values

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.values.clear()


def feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the points and the samples of the squared error normalised by the variance of
    the sample's teacher tensor.  Per sample, so that the loss of a batch is the mean of its
    samples' losses: data-parallel ranks, each weighting its rows by their share, then sum to
    one process's loss on the whole batch."""
    terms = []
    for s, t in zip(student, teacher):
        s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1).float()
        terms.append(((s - t).pow(2).mean(1) / t.var(1).clamp_min(1e-12)).mean())
    return torch.stack(terms).mean()
