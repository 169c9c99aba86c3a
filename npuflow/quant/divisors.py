"""Divisors that an 8-bit grid would round to zero stay float.

EfficientViT's ReLU linear attention divides by ``(q @ k^T 1) + eps`` (``eps`` 1e-6): calibrated, that
divisor spans 1e-6 .. 136, and the quantize step the plan put after the ``Add`` (on the accelerator
on every target) has a step near 1, so every divisor below 0.5 became exactly 0 and the CPU ``Div``
wrote infinities and NaN (128-160 of 4096 values per image) that the report showed as a cosine of
0.000000 without a word.  The float model never divides by zero there: the ``eps`` is what made the
range one-signed.  A divisor whose calibrated values are all of one sign and whose smallest
magnitude is below half of the finest 8-bit step its range allows (``max / 255 / 2``) is computed in
float: its producer (and any producer of one such tensor before it, through ops that read one
non-constant tensor: ``sqrt(var + eps)``) joins ``keep_float``, and so do the nodes between that chain and the
dividend (:func:`npuflow.check.data_dependent.dividend_cone`): RWKV's WKV divides ``sum(w exp(k) v)`` by ``sum(w exp(k))``, and with the
divisor float but the dividend on one 8-bit grid over the exponential's range the ratio lost its small terms
(held-out cosine 0.53 on cpu-int8, ``newuser_flows25.md``; a manual ``keep_float`` of the chain gave 0.9986).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from ..check.data_dependent import dividend_cone
from ..graph import GraphView
from ..operators import DIVISOR_INPUT
from ..targets import Target
from .config import QuantConfig
from .plan import build_plan, node_key

log = logging.getLogger(__name__)

#: Levels of the finest 8-bit grid a range can get (asymmetric, zero point at one end).
_LEVELS = 255


def rounds_to_zero(lo: float, hi: float) -> bool:
    """Whether a one-signed range [lo, hi] (0 not in it) holds values that its 8-bit grid rounds to 0."""
    if lo <= 0.0 <= hi or not lo <= hi:
        return False
    small, large = min(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    return small < large / _LEVELS / 2


def zero_divisors(view: GraphView, points: Any, minmax: dict) -> list[tuple[str, onnx.NodeProto]]:
    """(divisor tensor, dividing node) for every quantization point a divider reads as its divisor
    whose calibrated range rounds values to 0 (:func:`rounds_to_zero`)."""
    found = []
    for node in view.nodes:
        at = DIVISOR_INPUT.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if at is None or at >= len(node.input):
            continue
        t = node.input[at]
        mm = minmax.get(t)
        if t in points and mm is not None and mm.count and not mm.nonfinite and rounds_to_zero(mm.min, mm.max):
            found.append((t, node))
    return found


def _float_chain(view: GraphView, tensor: str, points: Any, minmax: dict) -> list[onnx.NodeProto]:
    """The producer of ``tensor`` and, while the tensor it reads (its only non-constant input) is a
    point that rounds to zero too, that tensor's producer: a divisor ``sqrt(var + eps)`` is float
    from the variance on."""
    chain: list[onnx.NodeProto] = []
    while (node := view.producer_node(tensor)) is not None and node not in chain:
        chain.append(node)
        data = [i for i in node.input if i and not view.is_const(i)]
        mm = minmax.get(data[0]) if len(data) == 1 else None
        if mm is None or data[0] not in points or not mm.count or not rounds_to_zero(mm.min, mm.max):
            break
        tensor = data[0]
    return chain


def keep_divisors_float(leg: onnx.ModelProto, tgt: Target, cfg: QuantConfig, allowed: set[str] | None, plan,
                        stats) -> tuple[Any, QuantConfig]:
    """The plan and config with the producers of divisors an 8-bit grid would round to 0 kept float
    (module docstring), and a warning naming them; unchanged when there are none."""
    view = GraphView(leg)
    found = zero_divisors(view, plan.points, stats.minmax)
    if not found:
        return plan, cfg
    new: list[str] = []
    for t, div in found:
        chain = _float_chain(view, t, plan.points, stats.minmax)
        for node in chain + dividend_cone(view, chain, div):
            key = node_key(node)
            if key not in cfg.keep_float and key not in new:
                new.append(key)
    if not new:
        return plan, cfg
    cfg = cfg.model_copy(update={"keep_float": [*cfg.keep_float, *new]})
    described = "; ".join(f"{node_key(n)} divides by {t} ({stats.minmax[t].min:.3g} .. {stats.minmax[t].max:.3g})"
                          for t, n in found)
    log.warning("kept in float (a divisor whose calibrated values an 8-bit grid rounds to 0, a division by zero "
                "in the quantized model: %s; with it the ops between it and the dividend, which spans its "
                "range): %s", described, ", ".join(new))
    return build_plan(leg, tgt, cfg, allowed), cfg
