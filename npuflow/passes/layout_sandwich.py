"""Cancel a layout chain and its inverse around element-wise ops (channels-last "sandwiches").

Converters of channels-last models (tf2onnx, TFLite, madmom's hand-written ONNX) wrap every
layer in ``Unsqueeze -> Transpose(0, 3, 1, 2) -> Conv -> Transpose(0, 2, 3, 1) -> Squeeze`` and
apply the activation in the channels-last layout, so a ``Conv -> Elu -> MaxPool`` reads
``Conv -> Transpose -> Squeeze -> Elu -> Unsqueeze -> Transpose -> MaxPool``.  Each pair of
layout ops is a CPU island on a target without transposes, and the activation between them,
cut off from its layer, runs in float (madmom's beats TCN: 33 to 51 compiled subgraphs).

An element-wise op computes each element from the same element of its input, so it commutes
with any reordering of elements: ``U(L(x)) = L(U(x))``, and for a binary op with a constant
operand ``c``, ``L(x) + c = L(x + c')`` with ``c'`` the constant in ``x``'s layout.  Where the
chain ``L`` above the op and the chain ``M`` below it compose to the identity, ``M(U(L(x)))`` is
``U(x)``: the op reads ``x`` and writes the tensor ``M`` wrote, and both chains go.  A chain of
layout ops alone that composes to the identity goes the same way.  Exact in float.

Only ``Transpose``, ``Squeeze`` and ``Unsqueeze`` with constant axes are followed: their effect is
tracked on axis labels (which source axis sits where; inserted axes are size 1), so the test
needs no sizes beyond which source axes are 1.  A ``Reshape`` is not followed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import GraphView, attr, remove_unused_initializers, unique_name
from ..operators import AXIS_LAYOUT_OPS, LAYOUT_COMMUTING_OPS
from ..value_info import inferred_dims

#: a label of an axis a layout op inserted (size 1)
_UNIT = -1


def cancel_layout_sandwiches(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with every cancelling layout chain removed (the model itself when none is)."""
    if not any(n.op_type in AXIS_LAYOUT_OPS and not n.domain for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dims = inferred_dims(out)
    changed = False
    while _cancel_one(out.graph, dims):
        changed = True
    if not changed:
        return model
    remove_unused_initializers(out.graph)
    return out


def _cancel_one(graph: onnx.GraphProto, dims: dict) -> bool:
    """Remove the first cancelling chain found (around an element-wise op, or alone); ``False``: none."""
    idx = GraphView(graph)
    for node in graph.node:
        if node.domain:
            continue
        if node.op_type in LAYOUT_COMMUTING_OPS and _around_op(graph, idx, node, dims):
            return True
        if node.op_type in AXIS_LAYOUT_OPS and _chain_alone(graph, idx, node, dims):
            return True
    return False


def _around_op(graph: onnx.GraphProto, idx: GraphView, op: onnx.NodeProto, dims: dict) -> bool:
    """``L -> op (-> more element-wise ops) -> M`` with ``M after L`` the identity becomes the ops alone
    on ``L``'s input."""
    if (k := _data_input(op, idx)) is None:
        return False
    ups = _up_chain(op.input[k], idx)
    if not ups:
        return False
    run = [(op, k)]
    while not idx.is_graph_output(t := run[-1][0].output[0]) and (nxt := idx.only_consumer(t)) is not None \
            and nxt.op_type in LAYOUT_COMMUTING_OPS and not nxt.domain and (j := _data_input(nxt, idx)) is not None \
            and nxt.input[j] == t:
        run.append((nxt, j))
    for i in range(len(ups), 0, -1):  # the longest chain above first
        top = ups[i - 1].input[0]
        labels = _labels(top, dims)
        trail = None if labels is None else _apply(labels, ups[:i][::-1], idx)
        if trail is None:
            continue
        consts = [_constants_in(node, j, trail[-1], labels, idx) for node, j in run]
        if any(c is None for c in consts):
            continue
        downs = _down_chain(run[-1][0].output[0], idx)
        steps = _apply(trail[-1], downs, idx) or []
        for j in range(len(steps) - 1, 0, -1):
            if _same(steps[j], labels):
                _rewire_run(graph, run, top, downs[j - 1].output[0], consts, [*ups[:i], *downs[:j]])
                return True
    return False


def _data_input(op: onnx.NodeProto, idx: GraphView) -> int | None:
    """The index of ``op``'s one non-constant input, or ``None`` (none, several, several outputs)."""
    data = [k for k, t in enumerate(op.input) if t and idx.const(t) is None]
    return data[0] if len(data) == 1 and len(op.output) == 1 else None


def _chain_alone(graph: onnx.GraphProto, idx: GraphView, first: onnx.NodeProto, dims: dict) -> bool:
    """A chain of layout ops from ``first`` down that composes to the identity: its readers read its input."""
    src = first.input[0]
    if (labels := _labels(src, dims)) is None:
        return False
    chain = [first, *_down_chain(first.output[0], idx)]
    steps = _apply(labels, chain, idx)
    for j in range(len(steps or []) - 1, 1, -1):
        end = chain[j - 1].output[0]
        if _same(steps[j], labels) and not idx.is_graph_output(end):
            for user in idx.consumer_nodes(end):
                for n, name in enumerate(user.input):
                    if name == end:
                        user.input[n] = src
            for node in chain[:j]:
                graph.node.remove(node)
            return True
    return False


def _up_chain(tensor: str, idx: GraphView) -> list[onnx.NodeProto]:
    """Layout nodes above ``tensor``, nearest first, each output read by the next only."""
    chain = []
    while (node := idx.producer_node(tensor)) is not None and node.op_type in AXIS_LAYOUT_OPS and not node.domain:
        if idx.only_consumer(tensor) is None or idx.is_graph_output(tensor):
            break
        chain.append(node)
        tensor = node.input[0]
    return chain


def _down_chain(tensor: str, idx: GraphView) -> list[onnx.NodeProto]:
    """Layout nodes below ``tensor``, nearest first, each reading the one before only."""
    chain = []
    while not idx.is_graph_output(tensor) and (node := idx.only_consumer(tensor)) is not None \
            and node.op_type in AXIS_LAYOUT_OPS and not node.domain and node.input[0] == tensor:
        chain.append(node)
        tensor = node.output[0]
    return chain


def _labels(tensor: str, dims: dict) -> list[tuple[int, bool]] | None:
    """``tensor``'s axes as ``(source axis, size is 1)``, or ``None`` when its rank is unknown."""
    shape = dims.get(tensor)
    return None if shape is None else [(a, d == 1) for a, d in enumerate(shape)]


def _apply(labels: list, chain: list[onnx.NodeProto], idx: GraphView) -> list[list] | None:
    """The labels before and after each node of ``chain`` (``None`` where one cannot be followed)."""
    steps = [labels]
    for node in chain:
        cur = steps[-1]
        if node.op_type == "Transpose":
            perm = attr(node, "perm")
            perm = list(range(len(cur)))[::-1] if perm is None else list(perm)
            if sorted(perm) != list(range(len(cur))):
                return None
            steps.append([cur[p] for p in perm])
            continue
        axes = _axes(node, idx)
        if axes is None:
            return None
        if node.op_type == "Squeeze":
            if not cur:
                return None
            axes = {a % len(cur) for a in axes}
            steps.append([lab for a, lab in enumerate(cur) if a not in axes])
        else:
            rank = len(cur) + len(axes)
            axes = sorted(a % rank for a in axes)
            new, rest = [], iter(cur)
            for a in range(rank):
                new.append((_UNIT, True) if a in axes else next(rest))
            steps.append(new)
    return steps


def _axes(node: onnx.NodeProto, idx: GraphView) -> list[int] | None:
    """A ``Squeeze``/``Unsqueeze``'s constant axes (attribute before opset 13, input after)."""
    if (axes := attr(node, "axes")) is not None:
        return list(axes)
    if len(node.input) > 1 and node.input[1]:
        value = idx.const(node.input[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return None


def _same(a: list, b: list) -> bool:
    """The same bytes under the same shape: size-1 axes anywhere equal, the others the same source axis."""
    return len(a) == len(b) and all((x[1] and y[1]) or x == y for x, y in zip(a, b))


def _constants_in(op: onnx.NodeProto, k: int, mid: list, top: list, idx: GraphView) -> dict | None:
    """Each constant operand of ``op`` (input index -> array) in the layout of ``top`` (``{}``: none),
    or ``None`` when one cannot be moved (it broadcasts a size-1 axis up, or has more axes)."""
    moved = {}
    for n, t in enumerate(op.input):
        if n == k or not t:
            continue
        c = idx.const(t)
        if op.op_type == "Clip" or (c.size == 1 and c.ndim <= len(top)):
            continue  # Clip's bounds, a scalar: the same in any layout
        if c.ndim > len(mid):
            return None
        c = c.reshape((1,) * (len(mid) - c.ndim) + c.shape)
        kept = [a for a, lab in enumerate(mid) if lab[0] != _UNIT and not lab[1]]
        if any(c.shape[a] != 1 for a in range(len(mid)) if a not in kept):
            return None
        order = sorted(kept, key=lambda a: [lab[0] for lab in top].index(mid[a][0]))
        squeezed = c.reshape([c.shape[a] for a in kept]).transpose([kept.index(a) for a in order])
        where = {mid[a][0]: c.shape[a] for a in kept}
        moved[n] = squeezed.reshape([where.get(lab[0], 1) for lab in top])
    return moved


def _rewire_run(graph: onnx.GraphProto, run: list[tuple[onnx.NodeProto, int]], top: str, end: str,
                consts: list[dict], removed: list[onnx.NodeProto]) -> None:
    """The first op of ``run`` reads ``top``, the last writes ``end``, constants relaid; the layout nodes go."""
    for (op, _), moved in zip(run, consts):
        for n, value in moved.items():
            name = unique_name(graph, f"{op.name or op.output[0]}/{n}_relaid")
            graph.initializer.append(numpy_helper.from_array(value, name))
            op.input[n] = name
    first, k = run[0]
    first.input[k] = top
    last = run[-1][0]
    stale = {*(op.output[0] for op, _ in run), *(o for node in removed for o in node.output)} - {end}
    last.output[0] = end
    for node in removed:
        graph.node.remove(node)
    for vi in [v for v in graph.value_info if v.name in stale]:
        graph.value_info.remove(vi)
