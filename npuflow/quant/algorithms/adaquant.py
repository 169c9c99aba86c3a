"""AdaQuant / fast finetune: tune a layer's weights and bias with the quantizer in the loop.

Hubara et al. (2021) and Vitis AI's ``fast_finetune``: instead of only choosing the rounding
direction, let the float weights and the bias move so that the *quantized* layer reproduces the
float layer's outputs on calibration data.  The forward pass uses ``s * clip(round(W/s))`` (the
target's round mode); gradients pass straight through the rounding (and are stopped where the
value is clipped).  Weights are optimised in units of their quantization step and the bias in
units of the output's standard deviation, so one learning rate suits every layer; the learning
rate decays to zero (cosine), so the rounding decisions settle instead of random-walking.
"""

from __future__ import annotations

import numpy as np

from ...numerics import round_values
from .layer_problem import Adam, LayerProblem, batches, cosine_decay, forward, grad_weight, torch_threads


def adaquant(
    p: LayerProblem, iters: int = 500, lr: float = 1e-4, batch: int = 256, backend: str = "numpy",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (g, o, K), bias (g, o, 1))`` tuned by AdaQuant for problem ``p``."""
    if backend == "torch":
        with torch_threads():
            return _adaquant_torch(p, iters, lr, batch, seed)
    u = (p.w / p.s).astype(np.float32)                 # weights in steps
    ystd = float(p.y.std()) or 1.0
    c = np.zeros_like(p.b, dtype=np.float32)          # bias offset in units of ystd
    opt = Adam([u, c], lr)
    for t, (x, y) in enumerate(batches(p, batch, iters, seed)):
        opt.lr = lr * cosine_decay(t, iters)
        r = round_values(u, p.round_mode).astype(np.float32)
        inside = (r >= p.qmin) & (r <= p.qmax)
        wq = np.clip(r, p.qmin, p.qmax) * p.s
        err = forward(wq, x) + p.b + c * ystd - y
        grad_wq = grad_weight(err, x)
        grad_u = grad_wq * p.s * inside
        grad_c = 2.0 * err.sum(axis=2, keepdims=True) / x.shape[2] * ystd
        opt.step([grad_u.astype(np.float32), grad_c.astype(np.float32)])
    codes = np.clip(round_values(u, p.round_mode), p.qmin, p.qmax)
    return codes, (p.b + c * ystd).astype(np.float32)


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
    u_np = u.detach().numpy()
    codes = np.clip(round_values(u_np, p.round_mode), p.qmin, p.qmax)
    return codes, (p.b + c.detach().numpy() * ystd).astype(np.float32)
