"""Fix channels (``fused_fixed.step_fixes``) of a fixed-point convolution: how they are grouped
(:func:`fix_groups`), which layers can have them (:func:`fixed_form`) and a dense
(:func:`dense_fixed`) or depthwise (:func:`depthwise_fixed`) layer with such channels on
``QLinearConv``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import helper

from . import fused_fixed, fused_permute, fused_qlinear
from .fused_graph import Graph, channel, clamp_bounds, code_span


#: The most runs of consecutive layer channels (exact-multiplier, fixed, apart) that
#: :func:`dense_fixed` puts in order by one ``Concat`` of the runs; with more, the parts are
#: concatenated whole and put in order by one ``Gather`` of channels.  Why: ONNX Runtime's
#: channels-last ``Split``/``Concat`` copy each run at each position, while a ``Gather`` costs two
#: layout transposes and the elementwise ops up to the next convolution in the channels-first
#: layout.  In-process A/B against the ``Gather`` form everywhere (same ``.npuf``, 12 rounds,
#: benchmarks/results/runtime_rec_s33.md): runs up to 4 PP-OCRv4 rec 1.02x, YOLOv8n 1.01x, det
#: 1.00-1.02x on bernoulli2; every layer in runs rec 1.08x but det 0.96x, YOLOv8n 0.94-0.99x.
MAX_RUNS = 4


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
    reach = code_span(g, op["inputs"][0], dtype, a["x_zp"])  # the fewest accumulators to prove: the fewest fixes
    form = fused_fixed.kernel_form(w, bias, ep, reach, partial=True)
    if form is None:
        return None
    w2, b2, mult = form
    bad = np.flatnonzero(np.isnan(mult))
    return w2, b2, mult, bad, fused_fixed.step_fixes(w, bias, ep, reach, bad)


def fix_groups(fixes: fused_fixed.StepFixes, bad: np.ndarray) -> list:
    """The fix channels of ``fixes`` for the layer's channels ``bad``, one group per round and kind
    (late fixes first, as ``fused_fixed.fixed_bytes`` applies them): ``(late, members, rows, move,
    bound)`` with ``members`` the fixed channels (positions among those ``fixes`` gives a
    multiplier, in order) that have a fix in this group, ``rows`` their layer channels, the bias
    ``move`` (``k - a``) of each, and for every fixed channel the bound of its ``Min`` or ``Max``
    (0 or 255 where it has no fix in this group: then the fix changes nothing)."""
    ok = np.flatnonzero(~np.isnan(fixes.mult))
    groups = []
    for late, table in ((True, fixes.late), (False, fixes.early)):
        for r in range(fused_fixed.FIX_ROUNDS):
            have = [(j, table[i][r]) for j, i in enumerate(ok) if table[i][r] is not None]
            if not have:
                continue
            members = np.array([j for j, _ in have], np.int64)
            bound = np.full(len(ok), 0 if late else 255, np.int64)
            bound[members] = [k if late else k - 1 for _, (_, k) in have]
            groups.append((late, members, bad[ok[members]], np.array([k - acc for _, (acc, k) in have], np.int64),
                           bound))
    return groups


def dense_fixed(g: Graph, op: dict, blobs: dict, t: str, pads: list[int], exact_conv: Callable) -> bool:
    """Write a fixed-point convolution only some of whose channels have an exact float32
    multiplier (``fused_fixed.kernel_form``) on ``QLinearConv`` all the same, and say whether it
    did: the other channels on the same kernel with the multipliers of ``fused_fixed.step_fixes``,
    whose few late or early steps more output channels of that kernel (fix channels) correct with
    ``Max``/``Min`` on those channels' bytes only, and any channel without such a form computed
    apart by ``exact_conv`` (``fused_conv.conv``: ``ConvInteger`` with the exact float64
    requantisation).  ``t``, ``pads``: the input and padding ``fused_conv.conv`` chose.

    Why: a channel with a step whose exact product lies within float32's spacing of a tie has no
    exact multiplier, and one in a layer kept the whole layer off the integer kernel (YOLOv8n on
    bernoulli2: 46 of 64 layers, 331 of 5,447 channels); computing such channels apart costs a
    ``ConvInteger``'s im2col of the layer's input whatever their number, while a fix channel is
    one more output of the kernel the layer runs anyway.  Dense convolutions only (a grouped
    one's channels would slice its input too).

    The kernel's channels are the exact-multiplier channels in layer order, then the fixed ones
    in order, then per fix group one channel for each fixed channel (aligned: the fixed bytes and
    a group's are combined channel by channel; a fixed channel without a fix in the group gets its
    own weights under the neutral bound: no ``Gather`` of a group's channels).  Where the layer's
    channels fall in at most :data:`MAX_RUNS` runs of consecutive channels, one ``Split`` cuts the
    kernel's bytes into those runs and one ``Concat`` puts them in layer order: ONNX Runtime runs
    the kernel channels-last and moves ``Split``, ``Min``/``Max`` and ``Concat`` into that layout,
    but not a ``Gather`` on the channel axis, which it runs between two layout ``Transpose`` nodes
    with every elementwise op up to the next convolution channels-first.  With more runs the parts
    are concatenated whole and put in order by one ``Gather``."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    form = fixed_form(g, op, blobs, depthwise=False)
    if form is None:
        return False
    w2, b2, mult, bad, fixes = form
    out, lo = op["outputs"][0], clamp_bounds(ep)[0]
    good, fixed = np.flatnonzero(~np.isnan(mult)), bad[~np.isnan(fixes.mult)]
    groups = fix_groups(fixes, bad)
    moved = int(ep["zp"]) - lo  # the kernel's output zero point: a fix channel's bytes are clip(acc - a + k)
    shifts = []
    for _, members, _, move, _ in groups:  # aligned with ``fixed``: any bias where no fix (neutral bound)
        b = np.zeros(len(fixed), np.int64)
        b[members] = move
        shifts.append(b - moved)
    rows = np.concatenate([good, fixed] + [fixed] * len(groups))
    m32 = np.concatenate([mult[good], fixes.mult[~np.isnan(fixes.mult)],
                          np.ones(len(fixed) * len(groups), np.float32)]).astype(np.float32)
    name = f"{out}#kernel"
    shape = [*a["out_shape"][:1], len(rows), *a["out_shape"][2:]]
    g.tensors = {**g.tensors, name: {**g.tensors[out], "shape": shape}}  # this graph's alone
    sub_ep = {**ep, "m32": m32, **{k: channel(ep[k], len(mult))[rows] for k in ("multiplier", "shift")}}
    sub = {**op, "outputs": [name], "attrs": {**a, "out_shape": shape, "epilogue": sub_ep, "lshift": 0}}
    bias = np.concatenate([b2[good], b2[fixed]] + [b2[fixed] + s for s in shifts])
    if not fused_qlinear.conv(g, sub, t, pads, {**blobs, "w": w2[rows], "b": bias}):
        return False
    permuted = fused_permute.absorbed(g, out)  # readers take the kernel's order: no reordering at all
    runs = not permuted and len(_runs(good)) + len(_runs(fixed)) + len(_runs(np.setdiff1d(bad, fixed))) <= MAX_RUNS
    cut = _runs if runs else _whole
    runs_good, runs_fixed = cut(good), cut(fixed)
    pieces = split_channels(g, g.as_bytes(name, lo), [len(r) for r in runs_good] + [len(fixed)] * (1 + len(groups)))
    parts = list(zip(runs_good, pieces))  # (layer channels, their bytes)
    if len(fixed):
        fixes_of = {True: [], False: []}  # per kind: each group's bytes, bounded
        for (late, _, _, _, at), y in zip(groups, pieces[len(runs_good) + 1:]):
            fixes_of[late].append(g.node("Min" if late else "Max", [y, bound(g, at, shape)]))
        y = pieces[len(runs_good)]
        for late in (True, False):  # late fixes first, as fused_fixed.fixed_bytes applies them
            if fixes_of[late]:
                y = g.node("Max" if late else "Min", [y, *fixes_of[late]])
        parts += zip(runs_fixed, split_channels(g, y, [len(r) for r in runs_fixed]))
    exact = np.setdiff1d(bad, fixed)
    if len(exact):
        name = f"{out}#exact"
        shape = [*a["out_shape"][:1], len(exact), *a["out_shape"][2:]]
        g.tensors = {**g.tensors, name: {**g.tensors[out], "shape": shape}}
        sub_ep = {**ep, **{k: channel(ep[k], len(mult))[exact] for k in ("multiplier", "shift")}}
        exact_conv(g, {**op, "outputs": [name], "attrs": {**a, "out_shape": shape, "epilogue": sub_ep, "lshift": 0}},
                   {**blobs, "w": np.asarray(blobs["w"])[exact], "b": np.asarray(blobs["b"]).reshape(-1)[exact]})
        runs_exact = cut(exact)
        parts += zip(runs_exact, split_channels(g, g.as_bytes(name, lo), [len(r) for r in runs_exact]))
    if not permuted:
        parts.sort(key=lambda part: part[0][0])  # in layer order where cut into runs
    y = parts[0][1] if len(parts) == 1 else g.node("Concat", [t for _, t in parts], axis=1)
    held = np.concatenate([c for c, _ in parts])  # the layer channel at each channel of y
    order = np.argsort(held)
    if permuted and not np.array_equal(order, np.arange(len(order))):
        g.put_bytes(out, y, lo)
        g.perm[out] = held
        return True
    g.put_bytes(out, y if np.array_equal(order, np.arange(len(order))) else
                g.node("Gather", [y, g.const(order, np.int64)], axis=1), lo)
    return True


def _whole(channels: np.ndarray) -> list[np.ndarray]:
    """``channels`` as one part (none where empty)."""
    return [channels] if len(channels) else []


def _runs(channels: np.ndarray) -> list[np.ndarray]:
    """Ascending ``channels`` cut into runs of consecutive numbers."""
    return [r for r in np.split(channels, np.flatnonzero(np.diff(channels) != 1) + 1) if len(r)]


def split_channels(g: Graph, y: str, sizes: list[int]) -> list[str]:
    """``y``'s channels in consecutive parts of ``sizes`` (one ``Split``; ``y`` itself for one part)."""
    if len(sizes) == 1:
        return [y]
    outs = [g.fresh() for _ in sizes]
    g.nodes.append(helper.make_node("Split", [y, g.const(np.asarray(sizes, np.int64), np.int64)], outs, axis=1))
    return outs


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
    for n, (late, _, rows, move, at) in enumerate(fix_groups(fixes, bad)):
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
