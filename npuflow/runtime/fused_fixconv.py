"""Fix channels (``fused_fixed.step_fixes``) of a fixed-point convolution: how they are grouped
(:func:`fix_groups`, read by ``fused_conv._split_fixed`` for dense layers), which layers can have
them (:func:`fixed_form`) and a depthwise layer with such channels on ``QLinearConv``
(:func:`depthwise_fixed`).
"""

from __future__ import annotations

import numpy as np

from . import fused_fixed, fused_qlinear
from .fused_graph import Graph, clamp_bounds, code_reach


def fixed_form(g: Graph, op: dict, blobs: dict, *, depthwise: bool) \
        -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, fused_fixed.StepFixes] | None:
    """``(w2, b2, mult, bad, fixes)`` of a fixed-point convolution that ``QLinearConv`` can run with
    fix channels: ``fused_fixed.kernel_form``'s weights, bias and per-channel multipliers (NaN where
    a channel has no exact one), those channels ``bad`` and their ``fused_fixed.step_fixes``; None
    where the layer is not such a convolution (a chain, a left shift, int8 weights missing, wider
    codes, per-channel zero points) -- dense (``group`` 1) or, with ``depthwise``, one weight per
    channel."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    dtype = np.dtype(g.tensors[op["inputs"][0]]["dtype"])
    w, bias = fused_qlinear.int8_weights(blobs["w"]), np.asarray(blobs["b"]).reshape(-1)
    if depthwise:
        shaped = w is not None and a.get("group", 1) == len(bias) == list(a["in_shape"])[1] and w.shape[1] == 1
    else:
        shaped = a.get("group", 1) == 1
    if ep["mode"] != "fixed" or ep.get("chain") or "m32" in ep or len(a["out_shape"]) != 4 or w is None \
            or not shaped or np.ndim(ep["zp"]) or np.ndim(a["x_zp"]) or np.any(np.asarray(a["lshift"]) != 0) \
            or bias.dtype.kind not in "iu" or dtype.itemsize != 1 or np.dtype(a.get("in_dtype", dtype)) != dtype:
        return None
    reach = code_reach(dtype, a["x_zp"])
    form = fused_fixed.kernel_form(w, bias, ep, reach, partial=True)
    if form is None:
        return None
    w2, b2, mult = form
    bad = np.flatnonzero(np.isnan(mult))
    return w2, b2, mult, bad, fused_fixed.step_fixes(w, bias, ep, reach, bad)


def fix_groups(fixes: fused_fixed.StepFixes, bad: np.ndarray) -> list:
    """The fix channels of ``fixes`` for the layer's channels ``bad``, one group per round and kind
    (late fixes first, as ``fused_fixed.fixed_bytes`` applies them): ``(late, rows, move, (index,
    bound))`` with the layer's channels ``rows`` the group's channels copy, the bias ``move`` (``k -
    a``) of each, and for each fixed channel (in order) the group channel its fix reads and the
    bound of its ``Min`` or ``Max`` (0 or 255 where it has no fix in this group: then the fix
    changes nothing)."""
    ok = np.flatnonzero(~np.isnan(fixes.mult))
    groups = []
    for late, table in ((True, fixes.late), (False, fixes.early)):
        for r in range(fused_fixed.FIX_ROUNDS):
            have = [(j, table[i][r]) for j, i in enumerate(ok) if table[i][r] is not None]
            if not have:
                continue
            index = np.zeros(len(ok), np.int64)
            bound = np.full(len(ok), 0 if late else 255, np.int64)
            for n, (j, (acc, k)) in enumerate(have):
                index[j], bound[j] = n, k if late else k - 1
            rows = bad[ok[[j for j, _ in have]]]
            groups.append((late, rows, np.array([k - acc for _, (acc, k) in have], np.int64), (index, bound)))
    return groups


def bound(g: Graph, values: np.ndarray, shape: list[int]) -> str:
    """The uint8 bounds ``values`` of a fix's ``Min`` or ``Max`` (one per channel) as a constant of
    the whole output ``shape`` but its batch.  Why not ``(1, C, 1, 1)``: ONNX Runtime runs the fused
    convolutions channels-last and moves these ops into that layout, where a per-channel operand
    broadcasts along the innermost axis, one short loop per pixel (a uint8 ``Min`` of 13x80x80:
    about 6x the time of the same ``Min`` with an operand of its own shape or a scalar)."""
    return g.const(np.broadcast_to(np.asarray(values, np.uint8).reshape(1, -1, 1, 1), (1, len(values), *shape[2:])),
                   np.uint8)


def depthwise_fixed(g: Graph, op: dict, blobs: dict, t: str, pads: list[int]) -> bool:
    """Write a fixed-point depthwise convolution some of whose channels have no exact float32
    multiplier (``fused_fixed.kernel_form``) on ``QLinearConv`` all the same, and say whether it did.

    Every channel runs on one depthwise ``QLinearConv``, those without an exact multiplier with
    ``fused_fixed.step_fixes``' multiplier; each group of their fixes (:func:`fix_groups`) is one
    more depthwise ``QLinearConv`` of the same input over all channels, multiplier 1, the fixed
    channels' biases moved as the dense layers' fix channels are, and every other channel under the
    neutral bound (0 under a late fix's ``Min``, 255 under an early one's ``Max``: its bytes change
    nothing).  A depthwise channel reads its own input channel only, so a fix channel of a subset
    would need a ``Gather`` of the input's channels and its bytes gathered back out to the layer's
    width: with whole-width fix convolutions the graph is convolutions of one input and ``Min``/
    ``Max`` of their outputs, which ONNX Runtime keeps in its channels-last layout (no transposes).
    Why: a depthwise layer with one such channel otherwise ran wholly on the float forms (``Conv``,
    the float64 requantisation).  Only where every such channel has fixes; ``t``, ``pads``: the
    input and padding ``fused_conv.conv`` chose."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    form = fixed_form(g, op, blobs, depthwise=True)
    if form is None:
        return False
    w2, b2, mult, bad, fixes = form
    cout = len(b2)
    if not len(bad) or np.any(np.isnan(fixes.mult)):
        return False
    mark = g.mark()
    out, lo = op["outputs"][0], clamp_bounds(ep)[0]
    m32 = mult.copy()
    m32[bad] = fixes.mult
    name = f"{out}#kernel"
    g.tensors = {**g.tensors, name: dict(g.tensors[out])}  # this graph's alone
    sub = {**op, "outputs": [name], "attrs": {**a, "epilogue": {**ep, "m32": m32}, "lshift": 0}}
    if not fused_qlinear.conv(g, sub, t, pads, {**blobs, "w": w2, "b": b2}):
        g.rollback(mark)
        return False
    moved = int(ep["zp"]) - lo  # the kernel's output zero point: a fix channel's bytes are clip(acc - a + k)
    fixed_of = {True: [], False: []}
    for n, (late, rows, move, (_, at)) in enumerate(fix_groups(fixes, bad)):
        b = b2 - moved  # a channel without a fix here: any bytes, under the neutral bound
        b[rows] += move
        full = np.full(cout, 0 if late else 255, np.int64)
        full[bad] = at
        fix = f"{out}#fix{n}"
        g.tensors = {**g.tensors, fix: dict(g.tensors[out])}
        fix_ep = {**ep, "m32": np.ones(cout, np.float32)}
        fix_op = {**op, "outputs": [fix], "attrs": {**sub["attrs"], "epilogue": fix_ep}}
        if not fused_qlinear.conv(g, fix_op, t, pads, {**blobs, "w": w2, "b": b}):
            g.rollback(mark)
            return False
        fixed_of[late].append(g.node("Min" if late else "Max", [g.as_bytes(fix, lo), bound(g, full, a["out_shape"])]))
    y = g.as_bytes(name, lo)
    for late in (True, False):  # late fixes first, as fused_fixed.fixed_bytes applies them
        if fixed_of[late]:
            y = g.node("Max" if late else "Min", [y, *fixed_of[late]])
    g.put_bytes(out, y, lo)
    return True
