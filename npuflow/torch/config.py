"""QAT configuration: what the user may choose, with the rest taken from the target.

The target file fixes what the hardware computes (scale type, rounding per tensor kind,
symmetry, per-channel weights); a :class:`QatConfig` only narrows the choices a user really has
(bit widths, learnable quantizer parameters, the observer method), so a QAT model cannot be
configured into numbers the chip will not produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import NpuflowError
from ..numerics import RoundMode
from ..targets import Target
from ..fake_quant import QuantSpec


class QatConfig(BaseModel):
    """User options of :func:`npuflow.torch.prepare_qat` (all optional)."""

    model_config = ConfigDict(extra="forbid")

    weight_bits: int = 8
    activation_bits: int = 8
    #: Train the quantizer parameters: TQT (log2 threshold) on power-of-two targets, LSQ (scale)
    #: on float-scale targets.  Otherwise scales come from observers and are frozen.
    learnable: bool = False
    #: How observers choose an activation/weight scale: ``diffs`` searches the power-of-two
    #: position (or float clipping ratio) with the least squared error; ``max`` covers the range.
    method: Literal["diffs", "max"] = "diffs"
    #: Fold BatchNorm into the preceding convolution (as the compiled model sees it).
    fold_bn: bool = True
    #: Per-channel weights (``None``: as the target says).
    per_channel: bool | None = None
    #: Momentum of the running activation range of float-scale observers.
    ema_momentum: float = 0.1


def qat_config(config: QatConfig | dict | None) -> QatConfig:
    """Validate a user config once, at the boundary."""
    if isinstance(config, QatConfig):
        cfg = config
    else:
        try:
            cfg = QatConfig(**(config or {}))
        except ValidationError as exc:
            raise NpuflowError("NPF_TORCH_BAD_CONFIG", reason=_first_error(exc)) from None
    for name in ("weight_bits", "activation_bits"):
        bits = getattr(cfg, name)
        if not 2 <= bits <= 16:
            raise NpuflowError("NPF_TORCH_BAD_CONFIG", reason=f"{name}={bits} is outside 2..16")
    return cfg


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg"))


@dataclass(frozen=True)
class Formats:
    """The integer formats and scale rules of each tensor kind for one target + config."""

    power_of_two: bool
    per_channel: bool
    weight: QuantSpec
    activation: QuantSpec
    bias: QuantSpec
    symmetric_activation: bool
    cfg: QatConfig


def formats_for(target: Target, cfg: QatConfig) -> Formats:
    """Derive quantizer formats from ``target.numerics`` and the user's config."""
    n = target.numerics
    pow2 = n.scale_type == "power_of_two"
    per_channel = n.weight_per_channel if cfg.per_channel is None else cfg.per_channel
    if pow2 and per_channel:
        raise NpuflowError(
            "NPF_TORCH_BAD_CONFIG",
            reason=f"target {target.name} uses power-of-two per-tensor scales; per_channel=True is not deployable",
        )
    symmetric = n.symmetric or pow2
    act_signed = n.activation_signed if symmetric else False
    return Formats(
        power_of_two=pow2,
        per_channel=per_channel,
        weight=QuantSpec(cfg.weight_bits, True, n.narrow_range_weights, RoundMode(n.round_mode.weight)),
        activation=QuantSpec(cfg.activation_bits, act_signed, False, RoundMode(n.round_mode.activation)),
        bias=QuantSpec(32, True, False, RoundMode(n.round_mode.bias)),
        symmetric_activation=symmetric,
        cfg=cfg,
    )
