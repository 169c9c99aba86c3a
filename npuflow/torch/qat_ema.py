"""An exponential moving average of the QAT student's weights (``qat_onnx(ema_decay=...)``, ``--ema``).

Why: a short CPU QAT run (a few hundred steps of batch 8) ends wherever its last noisy steps left
the weights; on PP-OCRv4 rec two seeds of one recipe ended 5 line-accuracy points apart.  The
average of the last ~1/(1 - decay) steps' weights is the usual remedy (timm's ``ModelEma``, the
QAT recipes built on it); the guard (:mod:`.qat_guard`) then judges it beside the final weights
and the PTQ start, so the average is returned only when it does better on the held-out samples.

Every floating-point entry of the model's ``state_dict`` is averaged: the trained weights and
biases, the learned quantizer thresholds or step sizes, and float buffers (BatchNorm statistics
are frozen in QAT, so they stay put).  The update is ``shadow += (1 - d) * (value - shadow)``,
which leaves an entry that never changes bit-identical (a fixed power-of-two scale stays one).
The decay warms up, ``d_t = min(decay, (1 + t) / (10 + t))`` after ``t`` earlier updates, so the
first steps' weights, still close to the start, do not dominate a short run's average.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import NpuflowError


def check_ema_decay(decay: Any) -> float | None:
    """``decay`` as a float, or None (no average); ``NPF_QAT_BAD_OPTION`` naming the value unless
    it is a number strictly between 0 and 1 (1 would never move from the start, 0 is the last step)."""
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) \
            or not 0.0 < decay < 1.0:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="ema_decay", value=decay,
                           reason="the weight EMA decay (--ema) is a number strictly between 0 and 1; about "
                                  "1 - 10/steps averages the last tenth of a run, e.g. 0.98 for ~200 steps "
                                  "(a horizon of ~50 steps)")
    return float(decay)


class WeightEma:
    """The running average of a module's floating-point parameters and buffers (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    def rate(self) -> float:
        """The decay of the next update (the warm-up's, until it reaches ``decay``)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Fold ``module``'s current values into the average (after each optimizer step)."""
        keep = self.rate()
        current = module.state_dict()
        for name, shadow in self.shadow.items():
            shadow.add_(current[name].detach() - shadow, alpha=1.0 - keep)
        self.updates += 1

    def copy_to(self, module: torch.nn.Module) -> None:
        """Load the average into ``module`` (entries that are not averaged keep their values)."""
        module.load_state_dict(self.shadow, strict=False)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to continue the average exactly."""
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (values moved to where this average's tensors are)."""
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name, shadow in self.shadow.items():
            shadow.copy_(state["shadow"][name])
