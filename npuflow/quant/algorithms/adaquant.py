"""AdaQuant / fast finetune: tune a layer's weights and bias with the quantizer in the loop.

Hubara et al. (2021) and Vitis AI's ``fast_finetune``: instead of only choosing the rounding
direction, let the float weights and the bias move so that the *quantized* layer reproduces the
float layer's outputs on calibration data.  The forward pass uses ``s * clip(round(W/s))`` (the
target's round mode); gradients pass straight through the rounding (and are stopped where the
value is clipped).  Weights are optimised in units of their quantization step and the bias in
units of the output's standard deviation, so one learning rate suits every layer; the learning
rate decays to zero (cosine), so the rounding decisions settle instead of random-walking.

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
        self.codes, self.bias = p.nearest_codes(), p.b
        self.error = p.error(self.codes, self.bias)

    def offer(self, t: int, u: np.ndarray, bias: np.ndarray, last: bool = False) -> None:
        """Score the iterate after step ``t`` (steps in weight units ``u``) when it is a checkpoint."""
        if not last and (t + 1) % self.every:
            return
        codes = np.clip(round_values(u, self.p.round_mode), self.p.qmin, self.p.qmax)
        bias = np.asarray(bias, np.float32)
        err = self.p.error(codes, bias)
        if err < self.error:
            self.codes, self.bias, self.error = codes, bias, err


def adaquant(
    p: LayerProblem, iters: int = 500, lr: float = DEFAULT_LR, batch: int = 256, backend: str = "numpy",
    seed: int = 0, input_drop: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (g, o, K), bias (g, o, 1))`` tuned by AdaQuant for problem ``p``.

    ``input_drop`` > 0 (needs ``p.xf``): QDrop on the layer's input, each input value of a step
    replaced by the float model's with that probability (numpy backend)."""
    if backend == "torch":
        with torch_threads():
            return _adaquant_torch(p, iters, lr, batch, seed)
    u = (p.w / p.s).astype(np.float32)                 # weights in steps
    ystd = float(p.y.std()) or 1.0
    c = np.zeros_like(p.b, dtype=np.float32)          # bias offset in units of ystd
    opt = Adam([u, c], lr)
    best = BestIterate(p, iters)
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
        grad_u = grad_wq * p.s * inside
        grad_c = 2.0 * err.sum(axis=2, keepdims=True) / x.shape[2] * ystd
        opt.step([grad_u.astype(np.float32), grad_c.astype(np.float32)])
        best.offer(t, u, p.b + c * ystd)
    best.offer(iters - 1, u, p.b + c * ystd, last=True)
    return best.codes, best.bias


def _adaquant_torch(p, iters, lr, batch, seed):
    import torch

    s, b0 = torch.from_numpy(p.s.astype(np.float32)), torch.from_numpy(p.b.astype(np.float32))
    ystd = float(p.y.std()) or 1.0
    u = torch.nn.Parameter(torch.from_numpy((p.w / p.s).astype(np.float32)))
    c = torch.nn.Parameter(torch.zeros_like(b0))
    opt = torch.optim.Adam([u, c], lr=lr)

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
