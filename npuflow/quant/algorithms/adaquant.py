"""AdaQuant / fast finetune: tune a layer's weights and bias with the quantizer in the loop.

Hubara et al. (2021) and Vitis AI's ``fast_finetune``: instead of only choosing the rounding
direction, let the float weights and the bias move so that the *quantized* layer reproduces the
float layer's outputs on calibration data.  The forward pass uses ``s * clip(round(W/s))`` (the
target's round mode); gradients pass straight through the rounding (and are stopped where the
value is clipped).  Weights are optimised in units of their quantization step and the bias in
units of the output's standard deviation, so one learning rate suits every layer; the learning
rate decays to zero (cosine), so the rounding decisions settle instead of random-walking.  A layer
whose written form has no bias (``LayerProblem.has_bias`` False) learns its weights only: an offset
learned there would be scored but never written.

The default rate, :data:`DEFAULT_LR` = 3e-3 steps per iteration, lets a weight travel about one
step over 500 iterations (Adam moves each parameter by ~lr per step, half of it after the cosine
decay).  The former 1e-4 moved a weight ~0.03 step in all, so almost no rounding could change and
AdaQuant was little more than nearest rounding (PP-OCRv4 rec on B4096, 100 evaluation lines:
lr 1e-4 ~6 % lines, 3e-3 30 %, 1e-2 25 %).  AMD Quark's lr 1e-5 is in float units: 1e-5 / s
steps, 1.3e-3 to 1e-2 for the weight scales 2^-7..2^-10 of that model (docs/accuracy.md).
A rate that large keeps the straight-through iterate moving across rounding boundaries, so the
solver returns the best rounded iterate it met (:class:`BestIterate`: the whole problem's error
checked :data:`CHECKS` times along the way and at the end), not merely the last one: on a layer
whose inputs are exact (nothing to compensate) the last iterate of a large rate can be worse
than the early ones.

:func:`adaquant_threshold` (``fast_finetune: {learn_threshold: true}``) learns the layer's
power-of-two weight threshold jointly with the weights and bias, as TQT does in QAT (Jain et al.,
2020): the scale is ``2 ** (round(log2 t) - (bits - 1))`` forward and ``log2 t`` takes TQT's
straight-through gradient (:func:`npuflow.fake_quant.tqt_scale`, the QAT quantizer's own), so the
fix position is chosen against the layer's output error instead of the weights' own MSE.
"""

from __future__ import annotations

import numpy as np

from ...numerics import round_values
from .layer_problem import Adam, LayerProblem, batches, cosine_decay, forward, grad_weight, torch_threads

#: Learning rate in weight steps (and output standard deviations for the bias) per iteration.
DEFAULT_LR = 3e-3
#: Times along the run the rounded iterate is scored on the whole problem (plus the end).
CHECKS = 20


class BestIterate:
    """The rounded codes and bias with the least error on the whole problem among those offered
    (the start, nearest rounding with the float bias, is the first)."""

    def __init__(self, p: LayerProblem, iters: int) -> None:
        self.p, self.every = p, max(1, iters // CHECKS)
        self.codes, self.bias, self.scale = p.nearest_codes(), p.b, p.s
        self.error = p.error(self.codes, self.bias)

    def due(self, t: int, last: bool = False) -> bool:
        """Whether the iterate after step ``t`` is scored (a checkpoint, or the last)."""
        return last or not (t + 1) % self.every

    def offer(self, t: int, u: np.ndarray, bias: np.ndarray, last: bool = False,
              scale: np.ndarray | None = None) -> None:
        """Score the iterate after step ``t`` (weights ``u`` in units of ``scale``, by default the
        problem's) when it is a checkpoint."""
        if not self.due(t, last):
            return
        codes = np.clip(round_values(u, self.p.round_mode), self.p.qmin, self.p.qmax)
        bias = np.asarray(bias, np.float32)
        scale = self.p.s if scale is None else np.broadcast_to(scale, self.p.s.shape).astype(np.float32)
        err = self.p.error(codes, bias, scale)
        if err < self.error:
            self.codes, self.bias, self.scale, self.error = codes, bias, scale, err


def adaquant(
    p: LayerProblem, iters: int = 500, lr: float = DEFAULT_LR, batch: int = 256, backend: str = "numpy",
    seed: int = 0, input_drop: float = 0.0, start: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (g, o, K), bias (g, o, 1))`` tuned by AdaQuant for problem ``p``.

    ``input_drop`` > 0 (needs ``p.xf``): QDrop on the layer's input, each input value of a step
    replaced by the float model's with that probability (numpy backend).  ``start``: ``(codes,
    bias)`` to learn from instead of the float weights and bias (GPTQ's, ``start: gptq``; numpy
    backend), also offered to the best-iterate check, so the result is never worse on the problem
    than the start."""
    if backend == "torch":
        with torch_threads():
            return _adaquant_torch(p, iters, lr, batch, seed)
    ystd = float(p.y.std()) or 1.0
    if start is None:
        u = (p.w / p.s).astype(np.float32)             # weights in steps
        c = np.zeros_like(p.b, dtype=np.float32)      # bias offset in units of ystd (stays 0 without a bias)
    else:
        u = np.asarray(start[0], np.float32).copy()
        c = ((np.asarray(start[1], np.float32) - p.b) / ystd).astype(np.float32)
    opt = Adam([u, c] if p.has_bias else [u], lr)
    best = BestIterate(p, iters)
    if start is not None:
        best.offer(0, u, p.b + c * ystd, last=True)
    mix = input_drop > 0 and p.xf is not None
    rng = np.random.default_rng(seed)
    for t, xy in enumerate(batches(p, batch, iters, seed, float_inputs=mix)):
        x, y = xy[0], xy[1]
        if mix:
            x = np.where(rng.random(x.shape, dtype=np.float32) < input_drop, xy[2], x)
        opt.lr = lr * cosine_decay(t, iters)
        r = round_values(u, p.round_mode).astype(np.float32)
        inside = (r >= p.qmin) & (r <= p.qmax)
        wq = np.clip(r, p.qmin, p.qmax) * p.s
        err = forward(wq, x) + p.b + c * ystd - y
        grad_wq = grad_weight(err, x)
        grads = [(grad_wq * p.s * inside).astype(np.float32)]
        if p.has_bias:
            grads.append((2.0 * err.sum(axis=2, keepdims=True) / x.shape[2] * ystd).astype(np.float32))
        opt.step(grads)
        best.offer(t, u, p.b + c * ystd)
    best.offer(iters - 1, u, p.b + c * ystd, last=True)
    return best.codes, best.bias


def _adaquant_torch(p, iters, lr, batch, seed):
    import torch

    s, b0 = torch.from_numpy(p.s.astype(np.float32)), torch.from_numpy(p.b.astype(np.float32))
    ystd = float(p.y.std()) or 1.0
    u = torch.nn.Parameter(torch.from_numpy((p.w / p.s).astype(np.float32)))
    c = torch.nn.Parameter(torch.zeros_like(b0), requires_grad=p.has_bias)
    opt = torch.optim.Adam([u, c] if p.has_bias else [u], lr=lr)

    def rounded(t):  # the target's rounding in the forward pass, identity gradient
        r = torch.from_numpy(round_values(t.detach().numpy(), p.round_mode).astype(np.float32))
        return t + (r - t).detach()

    best = BestIterate(p, iters)
    for t, (xb, yb) in enumerate(batches(p, batch, iters, seed)):
        for group in opt.param_groups:
            group["lr"] = lr * cosine_decay(t, iters)
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        r = rounded(u)
        inside = ((r >= p.qmin) & (r <= p.qmax)).float()
        rq = r * inside + (torch.clamp(r, p.qmin, p.qmax) * (1 - inside)).detach()
        loss = ((torch.matmul(rq * s, x) + b0 + c * ystd - y) ** 2).sum(dim=(0, 1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        best.offer(t, u.detach().numpy(), p.b + c.detach().numpy() * ystd)
    best.offer(iters - 1, u.detach().numpy(), p.b + c.detach().numpy() * ystd, last=True)
    return best.codes, best.bias


#: Adam rate of the log2 weight threshold under ``learn_threshold`` (cosine-decayed like the
#: weights'): the fix position changes when ``log2 t`` crosses a half-integer, 0.5 from its start,
#: and Adam moves it by at most ~lr per step, so 500 steps can travel ~2.5 positions.
THRESHOLD_LR = 1e-2


def adaquant_threshold(
    p: LayerProblem, iters: int = 500, lr: float = DEFAULT_LR, batch: int = 256, seed: int = 0,
    input_drop: float = 0.0, threshold_lr: float = THRESHOLD_LR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, bias, scale (g, o, 1))``: AdaQuant with the weight's log2 threshold learned (TQT).

    Needs torch and a per-tensor power-of-two scale (``p.per_tensor_pow2()``).  The weights live
    in steps of the starting scale ``s0``; the forward is ``fake_quantize(u * s0, scale)`` with the
    target's tie rule and code range (:func:`npuflow.fake_quant.fake_quantize`, bit-exact with
    :mod:`npuflow.numerics`), whose backward is TQT's: the weight gradient passes inside the range,
    the scale gradient is ``round(w/s) - w/s`` inside and the clipped code outside.  Like
    :func:`adaquant`, the best rounded iterate met (codes, bias *and* fix position) is returned,
    so the result is never worse on the problem than nearest rounding at the starting position."""
    from ...fake_quant import QuantSpec, fake_quantize, tqt_scale, tqt_scale_value
    from ...numerics import RoundMode

    signed = p.qmin < 0
    bits = int(p.qmax).bit_length() + int(signed)
    spec = QuantSpec(bits, signed, signed and p.qmin > -(2 ** (bits - 1)), RoundMode(p.round_mode))
    s0 = np.float32(p.s.reshape(-1)[0])
    ystd = float(p.y.std()) or 1.0
    best = BestIterate(p, iters)
    mix = input_drop > 0 and p.xf is not None
    rng = np.random.default_rng(seed)
    with torch_threads() as torch:
        b0 = torch.from_numpy(p.b)
        u = torch.nn.Parameter(torch.from_numpy((p.w / p.s).astype(np.float32)))
        c = torch.nn.Parameter(torch.zeros_like(b0), requires_grad=p.has_bias)
        log2_t = torch.nn.Parameter(torch.tensor(float(np.log2(s0)) + bits - 1, dtype=torch.float32))
        opt = torch.optim.Adam([{"params": [u, c] if p.has_bias else [u], "lr": lr},
                                {"params": [log2_t], "lr": threshold_lr}])
        s0t = torch.tensor(s0)

        def offer(t: int, last: bool = False) -> None:
            if not best.due(t, last):  # the iterate in the problem's steps is built for checkpoints only
                return
            scale = tqt_scale_value(log2_t.detach().numpy(), bits)
            w = (u.detach().numpy() * s0).astype(np.float32)
            best.offer(t, (w / scale).astype(np.float32), p.b + c.detach().numpy() * ystd, last, scale)

        for t, xy in enumerate(batches(p, batch, iters, seed, float_inputs=mix)):
            xb = np.where(rng.random(xy[0].shape, dtype=np.float32) < input_drop, xy[2], xy[0]) if mix else xy[0]
            decay = cosine_decay(t, iters)
            opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = lr * decay, threshold_lr * decay
            wq = fake_quantize(u * s0t, tqt_scale(log2_t, bits), 0, spec)
            z = torch.matmul(wq, torch.from_numpy(xb)) + b0 + c * ystd
            loss = ((z - torch.from_numpy(xy[1])) ** 2).sum(dim=(0, 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            offer(t)
        offer(iters - 1, last=True)
    return best.codes, best.bias, best.scale
