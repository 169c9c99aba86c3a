"""AdaRound: learn, per weight, whether to round down or up (Nagel et al., ICML 2020).

Nearest rounding minimises each weight's own error, not the layer's output error.  AdaRound
keeps ``floor(W/s)`` and learns a continuous ``V`` per weight; the rounding offset is the
rectified sigmoid ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (``zeta=1.1``,
``gamma=-0.1``).  It minimises the layer's output reconstruction error on calibration inputs (the
mean square over every output value, as AIMET does) plus ``lam * sum(1 - |2h - 1|^beta)``, a
regulariser that pushes every ``h`` to 0 or 1 while ``beta``
is annealed from 20 to 2 (after a warm-up of 20 % of the iterations without it).  The final
rounding is ``h >= 0.5``.  ``V`` starts where ``h`` equals the fractional part, i.e. at nearest
rounding.

The default learning rate, :data:`DEFAULT_LR` = 0.1 (AMD Quark's AdaRound default), lets ``V``
travel far enough in 100 iterations to turn any rounding: ``V`` starts at -0.7 for a weight whose
fractional part is 0.3 and must cross 0 to round it up, and Adam moves it by at most ~lr per step
(less with noisy gradients), so at the former 1e-2 a short run could turn only weights near the
tie and kept nearest rounding almost everywhere else.
Measured with ``bench_accuracy.py`` at 100 iterations per layer on DPUCZDX8G_ISA1_B4096 (same
calibration and evaluation samples; docs/accuracy.md): PP-OCRv4 rec 52.7 -> 65.7 % lines,
EfficientNet-Lite0 61.7 -> 87.0 % FP32 top-1 agreement.

With ``LayerProblem.act`` (``fast_finetune: {post_activation: true}``, :mod:`.activation`) the
output compared is the activation fused behind the layer, ``f(W x + b)``, and the gradient passes
through ``f'``; off by default (PP-OCRv4 rec +6.6 points at 500 iterations, EfficientNet-Lite0
-0.5: see :mod:`.activation`).

:func:`search_fix_position` (``fast_finetune: {learn_threshold: true}``) is AdaRound's form of a
learned power-of-two weight threshold: AdaRound's rounding variables live on one fixed grid, so
instead of TQT's straight-through gradient on ``log2 t`` (AdaQuant's form,
:func:`.adaquant.adaquant_threshold`) it compares the fix positions ``p-1, p, p+1`` by the layer
output error of their AdaRound.  Only full-length runs decide: a short run's ranking is not the
full run's, and choosing by it made both benchmark networks worse than not moving at all
(docs/accuracy.md).  Short runs only screen which neighbour is worth a full run.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .layer_problem import Adam, LayerProblem, batches, forward, grad_weight, torch_threads

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1
#: Learning rate of ``V`` (Adam), see the module docstring.
DEFAULT_LR = 0.1
#: Share of the iterations of each screening AdaRound in :func:`search_fix_position`.
SEARCH_SHARE = 0.2


def _h(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _beta(t: int, iters: int, warmup: float, start: float = 20.0, end: float = 2.0) -> float | None:
    """Annealed exponent, or ``None`` during warm-up (no regulariser)."""
    w = int(warmup * iters)
    if t < w:
        return None
    rel = (t - w) / max(iters - w, 1)
    return end + 0.5 * (start - end) * (1 + np.cos(rel * np.pi))


def _init_v(rest: np.ndarray) -> np.ndarray:
    r = np.clip(rest, 0.01, 0.99)
    return -np.log((ZETA - GAMMA) / (r - GAMMA) - 1.0)


def adaround(
    p: LayerProblem, iters: int = 500, lr: float = DEFAULT_LR, batch: int = 256, lam: float = 0.01,
    warmup: float = 0.2, backend: str = "numpy", seed: int = 0,
) -> np.ndarray:
    """Integer codes ``(g, o, K)`` chosen by AdaRound for problem ``p``."""
    if backend == "torch":
        with torch_threads():
            return _adaround_torch(p, iters, lr, batch, lam, warmup, seed)
    ws = (p.w / p.s).astype(np.float32)
    floor = np.floor(ws)
    v = _init_v(ws - floor).astype(np.float32)
    opt = Adam([v], lr)
    for t, (x, y) in enumerate(batches(p, batch, iters, seed)):
        sig = 1.0 / (1.0 + np.exp(-v))
        hpre = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(hpre, 0.0, 1.0).astype(np.float32)
        codes = floor + h
        inside = (codes >= p.qmin) & (codes <= p.qmax)
        wq = np.clip(codes, p.qmin, p.qmax) * p.s
        z = forward(wq, x) + p.b                               # (g, o, B)
        if p.act is None:
            err = z - y
        else:  # through the fused activation: d/dz of (f(z) - y)^2 is 2 (f(z) - y) f'(z)
            fz, dz = p.act(z)
            err = (fz - y) * dz
        grad_wq = grad_weight(err, x) / (err.shape[0] * err.shape[1])  # of the mean over outputs
        grad_h = grad_wq * p.s * inside
        beta = _beta(t, iters, warmup)
        if beta is not None:
            d = 2 * h - 1
            grad_h = grad_h - lam * beta * np.abs(d) ** (beta - 1) * np.sign(d) * 2
        grad_v = grad_h * ((hpre > 0) & (hpre < 1)) * sig * (1 - sig) * (ZETA - GAMMA)
        opt.step([grad_v.astype(np.float32)])
    return np.clip(floor + (_h(v) >= 0.5), p.qmin, p.qmax)


def search_fix_position(
    p: LayerProblem, full_error: Callable[[int], float], iters: int = 500, lr: float = DEFAULT_LR,
    batch: int = 256, lam: float = 0.01, warmup: float = 0.2, backend: str = "numpy", seed: int = 0,
) -> int:
    """The weight fix-position shift ``d`` in (-1, 0, 1) (scale ``p.s * 2**-d``: +1 is one step
    finer) to keep, given ``full_error(d)``: the layer output error of the full ``iters``-step
    AdaRound at shift ``d``, which the caller solves and keeps (so the winner's run is never repeated).

    A screen of ``SEARCH_SHARE * iters`` steps at each of the three positions names the neighbour,
    if any, whose short run beats the calibrated position's (the lower of two); it alone gets a full
    run, and it is kept only if that beats the calibrated position's full run, which is what
    ``learn_threshold: false`` writes.  So a layer never ends worse than at the calibrated position,
    at the cost of three short runs and at most one more full run per layer."""
    short = max(1, int(iters * SEARCH_SHARE))
    errors = {}
    for d in (0, -1, 1):
        q = p.at_scale((p.s * np.float32(2.0 ** -d)).astype(np.float32))
        errors[d] = q.error(adaround(q, short, lr, batch, lam, warmup, backend, seed))
    d = min((-1, 1), key=errors.__getitem__)
    bar = full_error(0)
    if errors[d] >= errors[0]:
        log.debug("fix search: short %s, kept the calibrated position (full %.4g)", errors, bar)
        return 0
    err = full_error(d)
    log.debug("fix search: short %s, full %.4g at the calibrated position, %.4g at %+d", errors, bar, err, d)
    return d if err < bar else 0


def _adaround_torch(p, iters, lr, batch, lam, warmup, seed):
    import torch

    with torch.no_grad():
        s, b = torch.from_numpy(p.s.astype(np.float32)), torch.from_numpy(p.b.astype(np.float32))
        ws = p.w / p.s
        floor_np = np.floor(ws)
        floor = torch.from_numpy(floor_np.astype(np.float32))
    v = torch.nn.Parameter(torch.from_numpy(_init_v(ws - floor_np).astype(np.float32)))
    act = None if p.act is None else _torch_activation(p.act)
    opt = torch.optim.Adam([v], lr=lr)
    for t, (xb, yb) in enumerate(batches(p, batch, iters, seed)):
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
        wq = torch.clamp(floor + h, p.qmin, p.qmax) * s
        z = torch.matmul(wq, x) + b
        loss = (((z if act is None else act(z)) - y) ** 2).mean()
        beta = _beta(t, iters, warmup)
        if beta is not None:
            loss = loss + lam * (1 - torch.abs(2 * h - 1) ** beta).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1).numpy()
    return np.clip(floor_np + (h >= 0.5), p.qmin, p.qmax)


def _torch_activation(fn):
    """``fn`` (numpy ``(f(z), f'(z))``) as a differentiable torch function: the activation is
    evaluated exactly as the numpy backend does, its derivative saved for the backward pass."""
    import torch

    class Act(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            value, slope = fn(z.detach().numpy())
            ctx.save_for_backward(torch.from_numpy(np.ascontiguousarray(slope, dtype=np.float32)))
            return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))

        @staticmethod
        def backward(ctx, grad):
            (slope,) = ctx.saved_tensors
            return grad * slope

    return Act.apply
