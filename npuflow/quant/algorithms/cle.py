"""Cross-layer equalisation (CLE): balance per-channel weight ranges of consecutive layers.

Per-tensor (and power-of-two) weight quantization wastes most of its codes on a depthwise layer
whose channels differ in range by 100x.  For ``Conv1 -> act -> Conv2`` with a positively
homogeneous ``act`` (``relu(x/s) = relu(x)/s``), dividing output channel *i* of Conv1 (weights and
bias) by ``s_i`` and multiplying input channel *i* of Conv2 by ``s_i`` leaves the network function
unchanged.  With ``r1_i``/``r2_i`` the channel's weight ranges in Conv1/Conv2,
``s_i = sqrt(r1_i * r2_i) / r2_i`` makes both equal to ``sqrt(r1_i * r2_i)`` (Nagel et al.,
"Data-Free Quantization", 2019).  Chains (Conv -> DWConv -> Conv) are handled by iterating
over all pairs a few times.

Supported links between the two layers: nothing (BN already folded), ``Relu``, ``Clip(0, hi)``
(ReLU6) and zero ``Pad``.  Depthwise and grouped convolutions are supported on either side.

Clipping activations: ``Clip(0, hi)`` (ReLU6) is *not* scale invariant
(``min(x/s, hi) != min(x, hi)/s``).  Two policies (``clip_policy``):

* ``"per_channel"`` (default, exact): the bound moves with the scale.  ``Clip(0, hi)`` becomes
  ``Relu`` followed by ``Min(x, hi / s)`` with a per-channel bound tensor, so the float model
  is unchanged for any input.  The ``Min`` is an extra (elementwise) op for the target.
* ``"calibrated"`` (keeps ``Clip`` so a DPU still fuses it as ReLU6): the scales are restricted
  using each channel's maximum ``m_i`` of Conv1's output on calibration data (times
  ``clip_headroom``): a channel that reaches ``hi`` keeps ``s_i = 1``; any other gets
  ``s_i >= m_i / hi``, so its scaled range stays below the bound.  Exact on data within the
  calibrated ranges; inputs that drive a channel further are clipped differently.

Without calibration data, ``"calibrated"`` skips ``Clip`` pairs.  ``Clip`` with a non-zero lower
bound is never equalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph import GraphView, attr, get_array, set_array
from .capture import Feed, capture
from .layers import WeightLayer, layer_bias, layer_weight, set_layer_bias, set_layer_weight, weight_layers

log = logging.getLogger(__name__)

#: Scales are kept in this interval so that no channel is blown up or zeroed.
SCALE_LIMITS = (1e-4, 1e4)


@dataclass
class EqualizedPair:
    """One equalised pair and the spread of its scales (for the log and the report)."""

    first: str
    second: str
    link: list[str]
    clip_max: float | None
    min_scale: float = 1.0
    max_scale: float = 1.0


@dataclass
class CleReport:
    pairs: list[EqualizedPair] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (first, second, reason)


@dataclass
class _Pair:
    first: WeightLayer
    second: WeightLayer
    link: list[onnx.NodeProto]
    clip_max: float | None  # None: the link is scale invariant
    bound: str | None = None  # per-channel Min bound initializer ("per_channel" policy)


def find_pairs(model: onnx.ModelProto) -> tuple[list[_Pair], list[tuple[str, str, str]]]:
    """Conv -> (Relu | Clip(0, hi) | zero Pad)* -> Conv chains whose tensors have one consumer each."""
    layers = {l.node.name or l.node.output[0]: l for l in weight_layers(model)}
    by_node = {id(l.node): l for l in layers.values()}
    view = GraphView(model)
    graph_outputs = {o.name for o in model.graph.output}
    pairs, skipped = [], []
    for first in layers.values():
        if first.node.op_type != "Conv":
            continue
        tensor, link, clip_max, reason = first.node.output[0], [], None, ""
        while True:
            users = view.consumer_nodes(tensor)
            if len(users) != 1 or tensor in graph_outputs:
                reason = "tensor has several consumers" if len(users) > 1 else ""
                break
            nxt = users[0]
            if id(nxt) in by_node:
                second = by_node[id(nxt)]
                if nxt.op_type != "Conv" or nxt.input[0] != tensor:
                    reason = f"{nxt.op_type} consumer"
                    break
                pairs.append(_Pair(first, second, link, clip_max))
                break
            if nxt.op_type == "Relu":
                pass
            elif nxt.op_type == "Clip":
                lo, hi = _clip_bounds(model, nxt)
                if lo != 0.0 or clip_max is not None:
                    reason = f"Clip({lo}, {hi}) is not scale invariant"
                    break
                clip_max = hi if np.isfinite(hi) else None
            elif nxt.op_type == "Pad" and _is_zero_pad(model, nxt):
                pass
            else:
                break
            link.append(nxt)
            tensor = nxt.output[0]
        if reason:
            skipped.append((first.name, "", reason))
    return pairs, skipped


def _clip_bounds(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[float, float]:
    if len(node.input) == 1 and attr(node, "min") is not None:  # opset < 11 style
        return float(attr(node, "min", -np.inf)), float(attr(node, "max", np.inf))
    bounds = []
    for k, default in ((1, -np.inf), (2, np.inf)):
        if len(node.input) > k and node.input[k]:
            try:
                bounds.append(float(get_array(model, node.input[k])))
            except KeyError:
                return np.nan, np.nan
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def _is_zero_pad(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    if (attr(node, "mode", b"constant") or b"constant") not in (b"constant", "constant"):
        return False
    if len(node.input) > 2 and node.input[2]:
        try:
            return float(get_array(model, node.input[2])) == 0.0
        except KeyError:
            return False
    return True


def _input_channel_ranges(w2: np.ndarray, groups: int, channels: int) -> np.ndarray:
    """Max |w| over every weight of Conv2 that reads each input channel."""
    cout, cpg = w2.shape[0], w2.shape[1]
    opg = cout // groups
    a = np.abs(w2).reshape(groups, opg, cpg, -1).max(axis=(1, 3))  # (groups, cpg)
    return a.reshape(channels)


def _scale_input_channels(w2: np.ndarray, groups: int, s: np.ndarray) -> np.ndarray:
    cout, cpg = w2.shape[0], w2.shape[1]
    opg = cout // groups
    shaped = w2.reshape(groups, opg, cpg, -1) * s.reshape(groups, 1, cpg, 1)
    return shaped.reshape(w2.shape).astype(np.float32)


def equalize(
    model: onnx.ModelProto,
    calibration: Iterable[Feed] | None = None,
    iterations: int = 4,
    max_batches: int = 8,
    clip_headroom: float = 1.0,
    clip_policy: str = "per_channel",
) -> tuple[onnx.ModelProto, CleReport]:
    """Return an equalised copy of ``model`` (BN must already be folded) and what was done.

    ``calibration`` (feed dicts) is only needed for pairs linked by ``Clip(0, hi)``; the first
    ``max_batches`` feeds are used to measure each channel's output maximum, and a channel
    counts as reaching the bound when ``clip_headroom`` times its maximum does (so inputs
    somewhat brighter than the calibration set are still not clipped differently).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs, skipped = find_pairs(out)
    report = CleReport(skipped=[s for s in skipped])
    if clip_policy not in ("per_channel", "calibrated"):
        raise ValueError(f"clip_policy must be 'per_channel' or 'calibrated', not {clip_policy!r}")
    if clip_policy == "per_channel":
        for p in pairs:
            if p.clip_max is not None:
                _clip_to_relu_min(out, p)
    clip_pairs = [p for p in pairs if p.clip_max is not None and p.bound is None]
    chan_max: dict[str, np.ndarray] = {}
    if clip_pairs and calibration is not None:
        names = [p.first.node.output[0] for p in clip_pairs]

        def keep(_: int, values: dict[str, np.ndarray]) -> None:
            for n, v in values.items():
                m = v.max(axis=tuple(i for i in range(v.ndim) if i != 1)) * clip_headroom
                chan_max[n] = np.maximum(chan_max[n], m) if n in chan_max else m

        feeds = []
        for k, f in enumerate(calibration):
            if k >= max_batches:
                break
            feeds.append(f)
        capture(out, feeds, names, keep)
    active = []
    for p in pairs:
        if p.clip_max is not None and p.bound is None and p.first.node.output[0] not in chan_max:
            report.skipped.append((p.first.name, p.second.name, "Clip link needs calibration data"))
            continue
        active.append(p)
    stats = {p.first.name: EqualizedPair(p.first.name, p.second.name, [n.op_type for n in p.link], p.clip_max,
                                         np.inf, 0.0) for p in active}
    for _ in range(iterations):
        for p in active:
            s = _equalize_pair(out, p, chan_max.get(p.first.node.output[0]))
            st = stats[p.first.name]
            st.min_scale = float(min(st.min_scale, s.min()))
            st.max_scale = float(max(st.max_scale, s.max()))
    report.pairs = list(stats.values())
    log.info("CLE: %d pairs equalised, %d skipped", len(report.pairs), len(report.skipped))
    return out, report


def _equalize_pair(model: onnx.ModelProto, p: _Pair, chan_max: np.ndarray | None) -> np.ndarray:
    w1 = layer_weight(model, p.first)
    b1 = layer_bias(model, p.first, w1.shape[0])
    w2 = layer_weight(model, p.second)
    c = w1.shape[0]
    if w2.shape[1] * p.second.groups != c:
        return np.ones(c)
    r1 = np.abs(w1).reshape(c, -1).max(axis=1).astype(np.float64)
    r2 = _input_channel_ranges(w2, p.second.groups, c).astype(np.float64)
    s = np.ones(c)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    if p.bound is not None:
        set_array(model, p.bound, get_array(model, p.bound) / s.reshape(1, c, *([1] * (w1.ndim - 2))))
    elif p.clip_max is not None:
        m = chan_max.astype(np.float64)
        saturating = m >= p.clip_max * (1 - 1e-6)
        s = np.where(saturating, 1.0, np.maximum(s, np.maximum(m, 0) / p.clip_max))
    s = np.clip(s, *SCALE_LIMITS)
    shape = (c,) + (1,) * (w1.ndim - 1)
    set_layer_weight(model, p.first, (w1 / s.reshape(shape)).astype(np.float32))
    if p.first.bias is not None or np.any(b1):
        set_layer_bias(model, p.first, (b1 / s).astype(np.float32))
    set_layer_weight(model, p.second, _scale_input_channels(w2, p.second.groups, s))
    if chan_max is not None:
        chan_max /= s.astype(chan_max.dtype)
    return s


def _clip_to_relu_min(model: onnx.ModelProto, p: _Pair) -> None:
    """Rewrite the pair's ``Clip(0, hi)`` as ``Relu`` + ``Min(x, bound)``, bound per channel."""
    clip = next(n for n in p.link if n.op_type == "Clip")
    c = layer_weight(model, p.first).shape[0]
    ndim = len(layer_weight(model, p.first).shape)
    bound = f"{clip.name or clip.output[0]}.cle_bound"
    model.graph.initializer.append(numpy_helper.from_array(
        np.full((1, c) + (1,) * (ndim - 2), p.clip_max, np.float32), bound))
    relu_out = f"{clip.output[0]}.cle_relu"
    out = clip.output[0]
    minimum = helper.make_node("Min", [relu_out, bound], [out], name=f"{clip.name}.cle_min")
    clip.op_type = "Relu"
    del clip.input[1:]
    clip.output[0] = relu_out
    nodes = list(model.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n is clip or (n.name == clip.name and n.output[0] == relu_out))
    model.graph.node.insert(idx + 1, minimum)
    p.bound = bound


def channel_range_spread(model: onnx.ModelProto, layer_name: str) -> float:
    """``max / median`` of per-output-channel weight ranges: how much a per-tensor scale wastes."""
    for l in weight_layers(model):
        if l.name == layer_name:
            w = layer_weight(model, l)
            r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            return float(r.max() / max(np.median(r), 1e-12))
    raise KeyError(layer_name)
