"""The fake-quantizer module of QAT: observer, then frozen or learnable quantization parameters.

Life cycle of an activation quantizer (the torch.ao / vai_q_pytorch QAT model):

1. *observing*: each training forward (or each forward inside ``QatModel.calibrate``) updates
   range statistics and the scale is re-derived from them; the forward already fake-quantizes,
   so training sees the quantization noise from the first step;
2. *frozen* (``freeze()``): the scale stops moving; with ``learnable=True`` it becomes a trained
   parameter instead: a log2 threshold rounded to an integer on power-of-two targets (TQT),
   a positive float step size on float-scale targets (LSQ).

Weight quantizers that are not learnable never freeze: their scale is re-derived from the
current weights at every forward, which is what the exported model will use.

Power-of-two observers follow Vitis AI's ``diffs`` + ``modal`` rule: each batch votes for the fix
position with the least squared quantization error, and the most voted position wins.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import numerics
from ..fake_quant import QuantSpec, fake_quantize, scale_grad, tqt_scale, tqt_scale_value
from .markers import QuantRecord, active_recorder, mark

_FIX_MIN, _FIX_MAX = -32, 63  # histogram bins of power-of-two fix positions
_CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)  # float-scale "diffs" search grid


class FakeQuantizer(nn.Module):
    """Quantize-dequantize one tensor with scales that observers or training choose."""

    def __init__(
        self,
        spec: QuantSpec,
        *,
        power_of_two: bool,
        symmetric: bool = True,
        axis: int | None = None,
        channels: int = 1,
        learnable: bool = False,
        method: str = "diffs",
        weight: bool = False,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.power_of_two = power_of_two
        self.symmetric = symmetric
        self.axis = axis
        self.learnable = learnable
        self.method = method
        self.weight = weight
        self.momentum = momentum
        self.calibrating = False
        self.name = ""  # the graph tensor it quantizes, set by prepare_qat
        self._leader: list[FakeQuantizer] = []  # scale-group leader (shared scale), if any
        shape = (channels,) if axis is not None else ()
        self.register_buffer("scale", torch.ones(shape, dtype=torch.float32))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        # The buffer travels with state_dict (checkpoints, resume); forward reads the Python
        # mirror, since reading a CUDA buffer as a bool waits for the device at every call.
        self.register_buffer("observing", torch.tensor(True))
        self._observing = True
        self.register_buffer("observed", torch.tensor(False))
        if power_of_two:
            self.register_buffer("fix_votes", torch.zeros(_FIX_MAX - _FIX_MIN + 1, dtype=torch.int64))
            if learnable:
                self.log2_threshold = nn.Parameter(torch.zeros(shape, dtype=torch.float32))
        else:
            self.register_buffer("running_min", torch.zeros(shape, dtype=torch.float32))
            self.register_buffer("running_max", torch.zeros(shape, dtype=torch.float32))
            if learnable:
                self.step_size = nn.Parameter(torch.ones(shape, dtype=torch.float32))

    def extra_repr(self) -> str:
        kind = "pow2" if self.power_of_two else "float"
        mode = "observing" if self._observing else ("learnable" if self.learnable else "frozen")
        return f"bits={self.spec.bits}, {kind}, round={self.spec.round_mode.value}, {mode}"

    # --- public state ---------------------------------------------------------------------

    def freeze(self) -> None:
        """Stop observing; a learnable quantizer starts training from the observed scale."""
        if self.weight and not self.learnable:
            return
        self._set_observing(False)

    def unfreeze(self) -> None:
        self._set_observing(True)

    def _set_observing(self, value: bool) -> None:
        self.observing.fill_(value)
        self._observing = value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001 (torch's signature)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._observing = bool(self.observing)

    def share_with(self, leader: FakeQuantizer) -> None:
        """Use ``leader``'s scale from now on (a scale group: inputs of a power-of-two add, concat)."""
        root = leader.group_leader()
        if root is not self:
            self._leader[:] = [root]

    def group_leader(self) -> FakeQuantizer:
        q = self
        while q._leader:
            q = q._leader[0]
        return q

    def quant_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scale and zero point the forward uses now (scale keeps its gradient)."""
        if self._leader:
            return self.group_leader().quant_params()
        if self.learnable and not self._observing:
            if torch.jit.is_tracing():  # exporting: the trained value enters the graph as a constant
                return self._trained_scale(), self.zero_point
            if self.power_of_two:
                return tqt_scale(self.log2_threshold, self.spec.bits), self.zero_point
            grad_factor = 1.0 / math.sqrt(max(self._numel, 1) * max(self.spec.qmax, 1))
            step = scale_grad(self.step_size.abs(), grad_factor)
            return step.clamp_min(float(np.finfo(np.float32).tiny)), self.zero_point
        # copies: a scale-group member may update the shared buffers before backward runs
        return self.scale.clone(), self.zero_point.clone()

    def _trained_scale(self) -> torch.Tensor:
        """The learnable scale's current value, computed outside autograd and tracing."""
        if self.power_of_two:
            return torch.from_numpy(tqt_scale_value(self.log2_threshold.detach().cpu().numpy(), self.spec.bits))
        step = np.abs(self.step_size.detach().cpu().numpy())
        return torch.from_numpy(np.asarray(np.maximum(step, np.finfo(np.float32).tiny), dtype=np.float32))

    def fix_pos(self) -> np.ndarray | None:
        """Power-of-two fix positions of the current scale (``None`` for float scales)."""
        return numerics.fix_pos_of(self.quant_params()[0].detach().cpu().numpy())

    # --- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracing = torch.jit.is_tracing()  # exporting: parameters are final (see QatModel.to_deployable)
        if not tracing and self._observing and (self.weight or self.training or self.calibrating):
            self._observe(x.detach())
        self._numel = x.numel() // max(1, self.scale.numel())
        scale, zp = self.quant_params()
        out = fake_quantize(x, scale, zp, self.spec, self.axis)
        if not self.weight and active_recorder() is not None:
            record = QuantRecord("activation", self.name, self.spec, scale.detach().cpu().numpy(),
                                 zp.detach().cpu().numpy(), self.axis)
            return mark(x, record)
        return out

    def _observe(self, x: torch.Tensor) -> None:
        if self._leader:  # group members vote into the leader's statistics
            self.group_leader()._observe(x)
            return
        if self.power_of_two:
            self._observe_pow2(x)
        else:
            self._observe_float(x)
        self.observed.fill_(True)

    def _amax(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return x.abs().max().reshape(())
        dims = [d for d in range(x.dim()) if d != self.axis]
        return x.abs().amax(dim=dims)

    def _sq_error(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        zp = torch.zeros_like(scale, dtype=torch.int32)
        err = (fake_quantize(x, scale, zp, self.spec, self.axis) - x).pow(2)
        if self.axis is None:
            return err.sum()
        dims = [d for d in range(x.dim()) if d != self.axis]
        return err.sum(dim=dims)

    def _observe_pow2(self, x: torch.Tensor) -> None:
        amax = float(x.abs().max())
        base = int(numerics.pow2_fix_pos(amax, self.spec.bits)) if amax > 0 else 0
        best = base
        if self.method == "diffs" and amax > 0:
            errors = []
            for fix in range(base, base + 4):
                scale = torch.tensor(float(numerics.pow2_scale(fix)))
                errors.append(float(self._sq_error(x, scale)))
            best = base + int(np.argmin(errors))
        best = int(np.clip(best, _FIX_MIN, _FIX_MAX))
        if self.weight:
            fix = best
        else:
            self.fix_votes[best - _FIX_MIN] += 1
            fix = int(torch.argmax(self.fix_votes)) + _FIX_MIN
        self.scale.fill_(float(numerics.pow2_scale(fix)))
        if self.learnable:
            self.log2_threshold.data.fill_(float(self.spec.bits - 1 - fix))

    def _observe_float(self, x: torch.Tensor) -> None:
        if self.symmetric:
            amax = self._amax(x)
            if self.weight and self.method == "diffs":
                amax = self._best_clip(x, amax)
            if not self.weight and bool(self.observed):
                amax = torch.lerp(self.running_max, amax, self.momentum)
            self.running_max.copy_(amax)
            amax_np = amax.cpu().numpy()
            if self.spec.signed:
                scale = numerics.float_scale(amax_np, self.spec.bits, self.spec.narrow)
            else:
                scale = np.maximum(amax_np, np.finfo(np.float32).tiny) / self.spec.qmax
            self.scale.copy_(torch.from_numpy(np.asarray(scale, dtype=np.float32)).reshape(self.scale.shape))
        else:
            lo, hi = x.min().reshape(()), x.max().reshape(())
            if bool(self.observed):
                lo = torch.lerp(self.running_min.reshape(()), lo, self.momentum)
                hi = torch.lerp(self.running_max.reshape(()), hi, self.momentum)
            self.running_min.fill_(float(lo))
            self.running_max.fill_(float(hi))
            scale, zp = numerics.asymmetric_params(float(lo), float(hi), self.spec.bits, self.spec.signed)
            self.scale.fill_(float(scale))
            self.zero_point.fill_(int(zp))
        if self.learnable:
            self.step_size.data.copy_(self.scale)

    def _best_clip(self, x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
        """Per-tensor or per-channel clipping ratio with the least squared error."""
        best_amax, best_err = amax, None
        for ratio in _CLIP_RATIOS:
            cand = amax * ratio
            scale = torch.from_numpy(
                np.asarray(numerics.float_scale(cand.cpu().numpy(), self.spec.bits, self.spec.narrow))
            ).reshape(amax.shape)
            err = self._sq_error(x, scale)
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_amax = torch.where(better, cand, best_amax)
            best_err = torch.where(better, err, best_err)
        return best_amax


class SharedQuantizer(nn.Module):
    """The quantize step after a pass-through op (max pool, reshape, ...): same scale as its input.

    The values are already on the input's grid, so the step is the identity in torch; it only
    appears in the export, where the format quantizes every tensor a quantized op writes.
    """

    def __init__(self, source: FakeQuantizer) -> None:
        super().__init__()
        self._source = [source]
        self.name = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if active_recorder() is None:
            return x
        src = self._source[0]
        scale, zp = src.quant_params()
        return mark(x, QuantRecord("activation", self.name, src.spec, scale.detach().cpu().numpy(),
                                   zp.detach().cpu().numpy(), None))
