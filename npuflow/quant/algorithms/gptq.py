"""GPTQ / OBQ weight rounding of one layer problem (``fast_finetune: {method: gptq}``, issue 18).

Frantar et al. (2022, GPTQ; 2022, OBQ): quantize a layer's weight columns one at a time on the
layer's fixed grid and, after each, move the columns not yet quantized so that the layer's output
on the calibration inputs changes least, using the inverse of ``H = X X^T``.  Here the problem is
:class:`.layer_problem.LayerProblem`'s: the *quantized* model's inputs ``X_q`` must give the
*float* layer's outputs ``Y``.  That target differs from GPTQ's ``W X_q``, so the float weights are
first refitted to it by ridge regression,

    W* = (Y X_q^T + lam W) (X_q X_q^T + lam I)^-1,

whose loss ``|Q X_q - Y|^2 + lam |Q - W|^2`` equals ``|(Q - W*) X_q|^2 + lam |Q - W*|^2`` up to a
constant: rounding ``W*`` by GPTQ with the damped ``H`` minimises exactly the problem's error
(plus the ridge).  ``lam`` is GPTQ's dampening, :data:`DAMP` times the mean diagonal of ``H``; it
also keeps ``W*`` at the float weights in the directions the calibration columns do not span (a
classifier's ``K`` = 1280 inputs against 256 columns).

The bias is one more column of ``W`` with a constant-one input row, quantized last and not at all
(an int32 bias is as good as float at the layer's scale): it absorbs the error left by every weight
column, which is bias correction done by the same algebra.  Columns are visited by decreasing
``H`` diagonal (GPTQ's ``act_order``: the inputs with the most energy are rounded while the most
columns remain to compensate), in blocks of :data:`BLOCK` with the updates of the columns after
the block applied once per block (GPTQ's lazy batch update).  Depthwise convolutions are one
``K`` x ``K`` problem per channel, solved together as a batch.  Everything is closed form: no
seed, no learning rate, a few seconds for EfficientNet-Lite0's 65 layers.  The columns enter only
through their sums ``X X^T``, ``Y X^T``, ``sum Y^2`` (:mod:`.layer_stats`), which fast finetune
streams over the calibration samples: memory does not grow with the column count.
"""

from __future__ import annotations

import numpy as np

from ...numerics import round_values
from .layer_problem import LayerProblem
from .layer_stats import LayerStats

#: The dampenings tried (GPTQ's ``percdamp``: ``lam`` = damp x the mean of ``diag(H)`` over the
#: weight columns); :func:`gptq` keeps the one with the least error on held-out columns.
DAMPS = (0.01, 0.1, 1.0)
#: Columns quantized between two lazy updates of the columns after them.
BLOCK = 128


def gptq(p: LayerProblem | LayerStats, damp: float | None = None,
         block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (g, o, K), bias (g, o, 1))`` of ``p`` by GPTQ on the problem's grid (``p.s``,
    ``p.qmin..p.qmax``, the target's tie rule).  A layer without a bias (``p.has_bias`` False)
    keeps ``p.b`` (zero) and compensates with its weights only.  ``p``'s columns are read only
    through their sums (:class:`.layer_stats.LayerStats`; a problem with columns is summed here).

    ``damp`` None: the one of :data:`DAMPS` whose solve on the first half of the columns (the
    first half of the calibration samples) has the least error on the second half.  The refit
    fits the columns it sees: with fewer columns than inputs (EfficientNet-Lite0's classifier,
    1280 inputs, one column per sample) GPTQ at GPTQ's 0.01 roughly halves the error on its own
    columns and raises it on others (a random 1000 x 1280 problem on 256 columns: 0.131 -> 0.009
    on them, 0.130 -> 0.195 on 256 others), so the dampening is chosen on columns it did not see."""
    if isinstance(p, LayerProblem):
        p = LayerStats.of(p)
    if damp is None:
        damp = _held_out_damp(p, block)
    g, o, k = p.w.shape
    c = p.total
    n = k + 1 if p.has_bias else k             # the bias as the last column, its input the row of ones
    w0 = p.w.astype(np.float64)
    if p.has_bias:
        w0 = np.concatenate([w0, p.b.astype(np.float64)], axis=2)
    h = c.xx[:, :n, :n] / c.m                                            # (g, n, n)
    diag = np.diagonal(h, axis1=1, axis2=2)
    lam = damp * diag[:, :k].mean(axis=1)
    lam = np.where(lam > 0, lam, 1.0)[:, None, None]                     # a dead input: the float weights stay
    hd = h + lam * np.eye(n)
    rhs = c.yx[:, :, :n] / c.m + lam * w0                                # (g, o, n)
    wstar = np.linalg.solve(hd, rhs.transpose(0, 2, 1)).transpose(0, 2, 1)

    # column order: weights by decreasing mean diagonal (one order for all groups keeps the batch), bias last
    order = np.concatenate([np.argsort(-diag[:, :k].mean(axis=0), kind="stable"), np.arange(k, n)])
    hp = hd[:, order][:, :, order]
    u = np.linalg.cholesky(np.linalg.inv(hp)).transpose(0, 2, 1)         # upper: inv(H) = U^T U
    wc = wstar[:, :, order]
    s = p.s.astype(np.float64)                                           # (g, o, 1)
    codes = np.zeros((g, o, k), np.float64)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = wc[:, :, i1:i2].copy()
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            j = i1 + i
            q = np.clip(round_values(w1[:, :, i:i + 1] / s, p.round_mode), p.qmin, p.qmax)
            codes[:, :, j] = q[:, :, 0]      # in the visiting order; put back below
            e = (w1[:, :, i] - q[:, :, 0] * s[:, :, 0]) / u[:, j, j][:, None]
            w1[:, :, i:] -= e[:, :, None] * u[:, None, j, j:i2]
            err[:, :, i] = e
        wc[:, :, i2:] -= np.matmul(err, u[:, i1:i2, i2:])
    out = np.empty_like(codes)
    out[:, :, order[:k]] = codes
    bias = wc[:, :, k:k + 1] if p.has_bias else p.b.astype(np.float64)
    return out.astype(np.float32), bias.astype(np.float32)


def _held_out_damp(p: LayerStats, block: int) -> float:
    """The dampening of :data:`DAMPS` with the least error on the second half of ``p``'s columns
    when solved on the first half (ties: the smaller)."""
    if len(p.parts) != 2 or p.parts[0].m < 2:
        return DAMPS[0]
    fit, check = p.part(0), p.part(1)
    errors = [check.error(*gptq(fit, d, block)) for d in DAMPS]
    return DAMPS[int(np.argmin(errors))]
