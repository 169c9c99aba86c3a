"""Channel permutations of a fused graph's tensors (``Graph.perm``): a fix layer's output left in
its kernel's channel order (``fused_fixconv.dense_fixed``) and the readers' weights permuted to
match at load.

Why: a fix layer's kernel writes its channels as exact-multiplier channels, then fixed ones; putting
them back in layer order costs a ``Gather`` on the channel axis (which ONNX Runtime runs between two
layout ``Transpose`` nodes, with the elementwise ops up to the next convolution channels-first) or a
``Split`` and ``Concat`` of runs.  A dense convolution reads a permuted input exactly with its input
channels' weights permuted the same way, a depthwise one with its channels (weights, bias,
per-channel requantisation) permuted, its output then in the same order, and the codewise ops
between (tables, eltwise ops with one-value constants: one set of parameters for every channel) do
not see the order at all.  Every permutation is an array operation on weights at load: the codes
computed are the same.

A permuted tensor ``t`` holds, at stored channel ``c``, the layer's channel ``perm[t][c]``.  Only
the readers :func:`absorbed` accepts read it permuted; :func:`before` puts it back in layer order
(:func:`restore`) for any other reader, and ``fused_run.FusedRun`` for a run's outputs.
"""

from __future__ import annotations

import numpy as np

from .fused_graph import Graph, code_range

#: The manifest ops that compute each output code from the input code at the same position with
#: one set of parameters for every channel (an eltwise op only where its constants hold one value:
#: checked by :func:`before`).
CODEWISE = ("lut", "eltwise")

#: The epilogue entries that may hold one value per output channel (a depthwise layer's, permuted
#: with its channels).
CHANNEL_PARAMS = ("multiplier", "shift", "zp", "scale", "acc_scale", "m32")


def absorbed(g: Graph, tensor: str) -> bool:
    """Whether every reader of ``tensor`` (8-bit NCHW, to be held permuted) and of the tensors
    derived from it by codewise ops and depthwise convolutions reads it permuted: such chains
    end at dense convolutions only (no graph output, concatenation, reshape, pool, product with
    a tensor of another order)."""
    derived, work, pending = {tensor}, [tensor], []
    while work:
        t = work.pop()
        readers = g.readers.get(t, [])
        if not readers:
            return False  # a program output (or unread): read in layer order outside
        for op in readers:
            kind = _conv_kind(g, op, t)
            if kind == "dense":
                continue
            if kind is None and op["op"] not in CODEWISE:
                return False
            if op["op"] == "eltwise":
                pending.append(op)
            out = op["outputs"][0]
            if out not in derived:
                derived.add(out)
                work.append(out)
    return all(t in derived for op in pending for t in op["inputs"])


def _conv_kind(g: Graph, op: dict, t: str) -> str | None:
    """``"dense"`` or ``"depthwise"`` where ``op`` is a 2-D convolution reading ``t`` as its input
    whose channels a permutation of ``t`` maps onto (no pad folded in, no chained epilogue); None
    otherwise."""
    if op["op"] != "conv" or op["inputs"][0] != t:
        return None
    a = op["attrs"]
    if len(a["in_shape"]) != 4 or list(g.tensors[t]["shape"]) != list(a["in_shape"]) or a.get("split_bytes") \
            or (a.get("epilogue") or {}).get("chain"):
        return None
    if a.get("group", 1) == 1:
        return "dense"
    if a["group"] == a["in_shape"][1] == a["out_shape"][1]:
        return "depthwise"
    return None


def before(g: Graph, op: dict, blobs: dict) -> tuple[dict, dict]:
    """``op`` and its ``blobs`` to write on ``g`` where some inputs are held permuted: a convolution's
    weights (and a depthwise one's channels) permuted to match, a codewise op as it is (its output
    then takes the order: :func:`after`); for any other reader, or inputs of different orders,
    those inputs put back in layer order first."""
    held = [t for t in op["inputs"] if t in g.perm]
    if not held:
        return op, blobs
    order = g.perm[held[0]]
    kind = _conv_kind(g, op, held[0])
    if kind is not None:
        w = np.asarray(blobs["w"])
        if kind == "dense":
            return op, {**blobs, "w": w[:, order]}
        c = len(order)
        a = op["attrs"]
        ep = {k: _take(v, order, c) if k in CHANNEL_PARAMS else v for k, v in a["epilogue"].items()}
        attrs = {**a, "epilogue": ep, "lshift": _take(a.get("lshift", 0), order, c)}
        return {**op, "attrs": attrs}, {**blobs, "w": w[order], "b": _take(np.asarray(blobs["b"]).reshape(-1), order, c)}
    if op["op"] in CODEWISE and all(t in g.perm and np.array_equal(g.perm[t], order) for t in op["inputs"]) \
            and all(np.size(blobs[s["const"]]) == 1 for s in op["attrs"].get("operands", []) if "const" in s):
        return op, blobs
    for t in held:
        restore(g, t)
    return op, blobs


def after(g: Graph, op: dict) -> None:
    """Give the output of a codewise op or depthwise convolution that read a permuted input
    (:func:`before` let it) the same order."""
    held = [t for t in op["inputs"] if t in g.perm]
    if held and (op["op"] in CODEWISE or _conv_kind(g, op, held[0]) == "depthwise"):
        g.perm[op["outputs"][0]] = g.perm[held[0]]


def restore(g: Graph, tensor: str) -> None:
    """Put permuted ``tensor`` back in layer order: one ``Gather`` of its bytes on the channel axis;
    its float views and the tables composed from it are dropped (made again from the new bytes)."""
    order = g.perm.pop(tensor)
    k = g.byte_offsets.get(tensor, 0) if tensor in g.bytes else code_range(g.tensors[tensor]["dtype"])[0]
    held = g.as_bytes(tensor, k)
    g.put_bytes(tensor, g.node("Gather", [held, g.const(np.argsort(order), np.int64)], axis=1), k)
    g.names.pop(tensor, None)
    g.offsets.pop(tensor, None)
    g.shifted = {key: v for key, v in g.shifted.items() if key[0] != tensor}
    g.tables = {t: v for t, v in g.tables.items() if v[0] != tensor and t != tensor}
    g.kernel_tables = {t: v for t, v in g.kernel_tables.items() if v[0] != tensor and t != tensor}


def _take(value, order: np.ndarray, c: int):
    """``value`` with its channels in ``order`` where it holds one per channel (``c``), else as it is."""
    return np.asarray(value)[order] if np.ndim(value) == 1 and len(value) == c else value
