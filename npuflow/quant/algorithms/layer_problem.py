"""One layer's reconstruction problem, shared by AdaRound and AdaQuant.

``W`` (grouped as ``(g, Cout/g, K)``) with per-row weight scale ``s`` must reproduce the float
layer's outputs ``Y`` (``(g, Cout/g, m)``) from the inputs ``X`` (``(g, K, m)``) that the
quantized model feeds it.  With ``act`` (the activation fused behind the layer, :mod:`.activation`)
the outputs compared are ``act(W X + b)`` and ``Y`` holds the float layer's activated outputs.
``has_bias`` False (a ``Conv`` without a bias input, a ``MatMul`` with no bias ``Add`` after it):
the written layer has nowhere to hold a bias, so AdaQuant learns none and every error it scores is
the written layer's.
Rounding, clipping and the optimiser (Adam) live here so that both
algorithms and both backends (numpy, torch) compute the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ...numerics import fix_pos_of, round_values

#: ``(f(z), f'(z))`` of an elementwise activation (an :class:`.activation.Activation`).
ActFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class LayerProblem:
    """All arrays float32 (mixed float32/float64 matmuls fall off BLAS and are 100x slower)."""

    w: np.ndarray          # (g, o, K) float weights
    s: np.ndarray          # (g, o, 1) weight scale per row
    b: np.ndarray          # (g, o, 1) float bias
    x: np.ndarray          # (g, K, m) inputs seen by the quantized layer
    y: np.ndarray          # (g, o, m) float layer outputs (targets)
    qmin: int
    qmax: int
    round_mode: str        # the tie rule of the weights' quantize step (the target's); no default
    xf: np.ndarray | None = None  # (g, K, m) the float model's inputs at the same columns (QDrop mixing)
    act: ActFn | None = None      # activation fused behind the layer: y is post-activation (AdaRound only)
    has_bias: bool = True         # the written layer holds a bias (False: b is zero and AdaQuant learns none)

    def __post_init__(self) -> None:
        for name in ("w", "s", "b", "x", "y") + (("xf",) if self.xf is not None else ()):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))

    def nearest_codes(self) -> np.ndarray:
        return np.clip(round_values(self.w / self.s, self.round_mode), self.qmin, self.qmax)

    def error(self, codes: np.ndarray, bias: np.ndarray | None = None, scale: np.ndarray | None = None) -> float:
        """Mean squared reconstruction error of integer ``codes`` (and an optional new bias, and
        weight scale: a learned threshold's)."""
        b = self.b if bias is None else bias
        s = self.s if scale is None else scale
        out = forward((codes * s).astype(np.float32), self.x) + b
        if self.act is not None:
            out = self.act(out)[0]
        return float(np.mean((out - self.y) ** 2))

    def at_scale(self, scale: np.ndarray) -> LayerProblem:
        """The same problem with weight scale ``scale`` (another fix position)."""
        return replace(self, s=scale)

    def per_tensor_pow2(self) -> bool:
        """One power-of-two weight scale for the whole layer: the only kind whose threshold
        ``learn_threshold`` learns (a DPU's weights)."""
        s = self.s.reshape(-1)
        return bool(np.all(s == s[0]) and fix_pos_of(s[0]) is not None)


def forward(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(g, o, K) @ (g, K, m)``; depthwise (o == 1, many groups) as a broadcast sum, which is far
    faster than thousands of tiny BLAS calls."""
    if w.shape[1] == 1 and w.shape[0] > 8:
        return np.einsum("gk,gkm->gm", w[:, 0, :], x)[:, None, :]
    return np.matmul(w, x)


def grad_weight(err: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``d/dW`` of ``mean_m sum_o (W x - y)^2``: ``2 err x^T / m``."""
    if err.shape[1] == 1 and err.shape[0] > 8:
        return 2.0 * np.einsum("gm,gkm->gk", err[:, 0, :], x)[:, None, :] / x.shape[2]
    return 2.0 * np.matmul(err, x.transpose(0, 2, 1)) / x.shape[2]


class Adam:
    """Plain Adam on a list of numpy arrays (the numpy backend's optimiser)."""

    def __init__(self, params: list[np.ndarray], lr: float, betas=(0.9, 0.999), eps=1e-8) -> None:
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, betas[0], betas[1], eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray], lrs: list[float] | None = None) -> None:
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            mh = self.m[i] / (1 - self.b1 ** self.t)
            vh = self.v[i] / (1 - self.b2 ** self.t)
            p -= (lrs[i] if lrs else self.lr) * mh / (np.sqrt(vh) + self.eps)


def batches(p: LayerProblem, batch: int, iters: int, seed: int = 0, float_inputs: bool = False):
    """``(x, y)`` column batches of ``p``, one per iteration (deterministic).

    The columns are shuffled once and cut into contiguous blocks that the iterations cycle
    through (epochs): gathering scattered columns each iteration cost 45 ms per iteration on a
    1152-channel depthwise layer, more than the solver's own arithmetic.
    """
    m = p.x.shape[2]
    if batch >= m:
        for _ in range(iters):
            yield (p.x, p.y, p.xf) if float_inputs else (p.x, p.y)
        return
    n = m // batch
    cols = np.random.default_rng(seed).permutation(m)[: n * batch]

    def blocks(a: np.ndarray) -> np.ndarray:  # (n, g, rows, batch)
        return np.ascontiguousarray(a[:, :, cols].reshape(a.shape[0], a.shape[1], n, batch).transpose(2, 0, 1, 3))

    xb, yb = blocks(p.x), blocks(p.y)
    fb = blocks(p.xf) if float_inputs else None
    for t in range(iters):
        yield (xb[t % n], yb[t % n], fb[t % n]) if float_inputs else (xb[t % n], yb[t % n])


def cosine_decay(t: int, iters: int) -> float:
    """Learning-rate factor at step ``t``: 1 -> 0 along half a cosine."""
    return 0.5 * (1.0 + np.cos(np.pi * t / max(iters, 1)))


class torch_threads:
    """Context: torch with ``n`` intra-op threads (tiny layer problems lose time to thread
    hand-offs, badly so on a busy machine); restores the previous setting."""

    def __init__(self, n: int = 1) -> None:
        self.n = n

    def __enter__(self):
        import torch

        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return torch

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self.prev)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
