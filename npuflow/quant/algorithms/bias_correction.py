"""Bias correction: remove the mean output shift that weight rounding causes.

Rounding ``W`` to ``W_q`` shifts each output channel's mean by ``(W_q - W) @ E[x]`` (linearity),
and the shifts of many layers add up, most visibly in depthwise layers with few weights per
channel (Nagel et al., 2019, section 4.2).  Subtracting that shift from the bias restores the mean.

* :func:`correct_empirical` takes the mean input *patch* (per input channel and kernel tap, zero
  padding included) from calibration runs of the QDQ model itself (the inputs the layer really
  sees), one streaming pass over the data; the shift ``(W_q - W) @ E[patch]`` is then exact.
* :func:`correct_data_free` takes ``E[x]`` from the statistics of a ``BatchNormalization`` that
  feeds the layer in the float model (``beta`` for a linear link; the mean of a rectified
  ``N(beta, gamma^2)`` after ``Relu``/``Clip``), so it needs no data at all.

Both change only the bias initializers of the QDQ model, never a scale; an int32 bias is
re-quantized with ``round_mode``, the target's bias tie rule, as the export quantized it (it used
to be rounded half to even whatever the target, so a DPU bias corrected by zero could move).  Layers are matched
between the float and the QDQ model by node name; a layer without a bias input is left alone.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import numpy as np
import onnx

from ...graph import GraphView, attr, get_array
from .capture import Feed, capture
from .layers import layer_weight, weight_layers
from .patches import PatchSampler, grouped_weight
from ...numerics import RoundMode
from .qdq_weights import QuantizedLayer, dequantized_weight, quantized_layers, read_bias, write_bias

log = logging.getLogger(__name__)


def _weight_error(float_model: onnx.ModelProto, qmodel: onnx.ModelProto) -> dict[str, tuple[QuantizedLayer, np.ndarray]]:
    """``{name: (layer, W_q - W)}`` for layers present (by name, same shape) in both models."""
    floats = {l.name: l for l in weight_layers(float_model)}
    out = {}
    for ql in quantized_layers(qmodel):
        fl = floats.get(ql.name)
        if fl is None or ql.bias_name is None:
            continue
        w = layer_weight(float_model, fl)
        wq = dequantized_weight(qmodel, ql)
        if w.shape != wq.shape:
            continue
        out[ql.name] = (ql, (wq - w).astype(np.float64))
    return out


def _patch_from_channel_means(mean_in: np.ndarray, delta: np.ndarray, groups: int) -> np.ndarray:
    """``(groups, K)`` mean patch from per-input-channel means (every kernel tap sees the mean)."""
    taps = int(np.prod(delta.shape[2:], dtype=np.int64)) if delta.ndim > 2 else 1
    return np.repeat(mean_in.astype(np.float64), taps).reshape(groups, -1)


def _apply(qmodel, errors, mean_patches, round_mode: RoundMode | str) -> list[str]:
    """Subtract ``dW @ mean_patch`` from each layer's bias; the names of the layers changed."""
    corrected = []
    for name, (ql, delta) in errors.items():
        patch = mean_patches.get(name)
        if patch is None or patch.size != delta[0].size * ql.groups:
            continue
        shift = np.einsum("gok,gk->go", grouped_weight(delta, ql.groups), patch.reshape(ql.groups, -1))
        b = read_bias(qmodel, ql, delta.shape[0]).astype(np.float64)
        if write_bias(qmodel, ql, (b - shift.reshape(-1)).astype(np.float32), round_mode):
            corrected.append(name)
    return corrected


def correct_empirical(
    float_model: onnx.ModelProto, qmodel: onnx.ModelProto, calibration: Iterable[Feed], round_mode: RoundMode | str,
    on_outputs: Callable[[list[np.ndarray]], None] | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``qmodel`` with biases corrected from calibration data; also the corrected names.

    ``on_outputs`` receives ``qmodel``'s graph outputs for each sample of the same pass (the
    quantizer's ``auto`` check compares them with the corrected model's, without another run).
    """
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    errors = _weight_error(float_model, out)
    if not errors:
        return out, []
    samplers = {n: PatchSampler(ql.node, d.shape, per_batch=1) for n, (ql, d) in errors.items()}
    names = {n: errors[n][0].node.input[0] for n in errors if samplers[n].supported}
    sums: dict[str, np.ndarray] = {}
    count = [0]

    graph_outputs = [o.name for o in out.graph.output] if on_outputs is not None else []

    def keep(_: int, values: dict[str, np.ndarray]) -> None:
        count[0] += 1
        for lname, tensor in names.items():
            sums[lname] = sums.get(lname, 0) + samplers[lname].mean_patch(values[tensor])
        if on_outputs is not None:
            on_outputs([values[o] for o in graph_outputs])

    capture(out, calibration, sorted(set(names.values()) | set(graph_outputs)), keep)
    means = {n: s / max(count[0], 1) for n, s in sums.items()}
    corrected = _apply(out, errors, means, round_mode)
    log.info("bias correction (empirical): %d layers", len(corrected))
    return out, corrected


def _rectified_mean(mu: np.ndarray, sigma: np.ndarray, hi: float | None) -> np.ndarray:
    """``E[clip(X, 0, hi)]`` for ``X ~ N(mu, sigma^2)`` (``hi=None``: plain ReLU)."""
    sigma = np.maximum(np.abs(sigma), 1e-12)

    def part(t):  # E[max(X - t, 0)]
        z = (mu - t) / sigma
        cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return (mu - t) * cdf + sigma * pdf

    m = part(0.0)
    if hi is not None and np.isfinite(hi):
        m = m - part(hi)
    return m


def bn_input_means(float_model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``{layer name: E[input per channel]}`` for layers fed by a BatchNormalization (+ Relu/Clip)."""
    view = GraphView(float_model)
    layers = {id(l.node): l for l in weight_layers(float_model)}
    means = {}
    for bn in float_model.graph.node:
        if bn.op_type != "BatchNormalization":
            continue
        try:
            gamma, beta = get_array(float_model, bn.input[1]), get_array(float_model, bn.input[2])
        except KeyError:
            continue
        mu, sigma = beta.astype(np.float64), np.abs(gamma.astype(np.float64))
        tensor, act = bn.output[0], None
        users = view.consumer_nodes(tensor)
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            act = users[0]
            tensor = act.output[0]
            users = view.consumer_nodes(tensor)
        if act is None:
            m = mu
        elif act.op_type == "Relu":
            m = _rectified_mean(mu, sigma, None)
        else:
            lo, hi = _clip_limits(float_model, act)
            if lo != 0.0:
                continue
            m = _rectified_mean(mu, sigma, hi)
        for u in users:
            if id(u) in layers and u.input[0] == tensor:
                means[layers[id(u)].name] = m
    return means


def _clip_limits(model, node) -> tuple[float, float]:
    if attr(node, "min") is not None:
        return float(attr(node, "min")), float(attr(node, "max", np.inf))
    vals = []
    for k, d in ((1, -np.inf), (2, np.inf)):
        try:
            vals.append(float(get_array(model, node.input[k])) if len(node.input) > k and node.input[k] else d)
        except KeyError:
            vals.append(np.nan)
    return vals[0], vals[1]


def correct_data_free(
    float_model: onnx.ModelProto, qmodel: onnx.ModelProto, round_mode: RoundMode | str,
    bn_model: onnx.ModelProto | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """Bias correction from BN statistics.

    ``bn_model`` is the float model *before* BN folding (the statistics live there); it defaults
    to ``float_model``.  Layers without a BN in front are not changed, nor are ``ConvTranspose``
    layers: with strides, a kernel tap reads a real input at only some output positions (the
    others read the interleaved zeros), so "every tap sees the channel mean" does not hold there.
    """
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    means = bn_input_means(bn_model if bn_model is not None else float_model)
    errors = _weight_error(float_model, out)
    patches = {n: _patch_from_channel_means(means[n], d, ql.groups) for n, (ql, d) in errors.items()
               if n in means and means[n].size == d.shape[1] * ql.groups and ql.node.op_type != "ConvTranspose"}
    corrected = _apply(out, errors, patches, round_mode)
    log.info("bias correction (data-free): %d layers", len(corrected))
    return out, corrected
