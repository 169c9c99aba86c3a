"""A sum over a short axis (``ReduceSum`` of one axis of size 2..:data:`MAX_TERMS`) as slices and adds.

ResNeSt's split attention sums its radix branches, ``x.view(b, r, c, h, w).sum(1)``, twice per block
(the branches before the attention and the weighted ones after it); no target lowers ``ReduceSum``
("has no integer lowering" on cpu-int8, "no DPU / BPU implementation" on the others), so each ran
in float on the CPU between two accelerator subgraphs (round 24: 7 accelerator subgraphs on every
target for two blocks).  A sum of r terms along an axis is r width-1 ``Slice``s of that axis added
left to right (``-> Squeeze`` of the axis for ``keepdims`` 0): the same terms, each ``Add`` one
element-wise add every target runs.  Only a constant single axis of known size on real-valued data (not
counts cast from booleans or integers),
and only where the target runs both slices and element-wise adds (every bundled target); longer
axes stay (a softmax's or a pooling's sum is no chain of adds worth its requantisations).

A term that is zero by construction is left out: a stereo network's soft-argmin sums
``softmax(-cost, 1) * arange(D)`` over the disparities, and the product's first slice is the
probabilities times the constant 0 (round 28a's StereoNet: that slice held only zeros on every
calibration sample, so quantize warned ``NPF_QUANT_CALIB_ALL_ZERO`` on ``/ReduceSum_output_0/term0``,
a tensor the user never wrote, and the add of it cost a requantisation for nothing).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr, remove_unused_initializers
from ..operators import COUNT_KEEPING_OPS
from ..targets import Target
from ..value_info import dims_of, tensor_elem_types
from .activations import _splice
from .gather_slice import _REAL

#: longer axes stay one ReduceSum (each further term is another requantised add)
MAX_TERMS = 8


def short_sums_as_adds(model: onnx.ModelProto, target: Target | None) -> onnx.ModelProto:
    """A new model with each sum over one short axis written as slices and adds where ``target``
    runs them (the model itself when nothing changes)."""
    if target is None or any(target.rule(op) is None for op in ("strided_slice", "eltwise_add")):
        return model
    if not any(n.op_type == "ReduceSum" and not n.domain for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out.graph)
    dims = dims_of(out, [n.input[0] for n in out.graph.node if n.op_type == "ReduceSum" and not n.domain])
    try:
        types = tensor_elem_types(onnx.shape_inference.infer_shapes(out))
    except (ValueError, onnx.shape_inference.InferenceError):
        types = tensor_elem_types(out)
    changed = False
    for node in list(out.graph.node):
        if node.op_type != "ReduceSum" or node.domain:
            continue
        shape = dims.get(node.input[0]) or ()
        axis = _one_axis(node, view, len(shape))
        if axis is None or types.get(node.input[0]) not in _REAL or _counts(view, node.input[0], types):
            continue
        terms = shape[axis]
        if not isinstance(terms, int) or not 2 <= terms <= MAX_TERMS:
            continue
        kept = _nonzero_terms(view, node.input[0], axis, len(shape), terms)
        _splice(out.graph, [node], _slices_and_adds(out.graph, node, axis, kept, bool(attr(node, "keepdims", 1))))
        changed = True
    if not changed:
        return model
    remove_unused_initializers(out.graph)
    return out


def _counts(view: GraphView, tensor: str, types: dict[str, int], depth: int = 8) -> bool:
    """``tensor`` holds counts: a ``Cast`` of booleans or integers to float, or sums and rearrangements
    of such (a classifier's votes, as skl2onnx's nearest-neighbour models write them).  Counting is no
    feature map to put on the accelerator, and quantized adds of votes could change which class wins."""
    node = view.producer_node(tensor)
    if node is None or depth == 0:
        return False
    if node.op_type == "Cast":
        return types.get(node.input[0]) not in _REAL
    data = [t for t in node.input if t and view.value(t) is None]
    return node.op_type in COUNT_KEEPING_OPS and bool(data) and all(_counts(view, t, types, depth - 1) for t in data)


def _one_axis(node: onnx.NodeProto, view: GraphView, rank: int) -> int | None:
    """The one axis ``node`` sums over (opset 13's ``axes`` input or the older attribute), or ``None``."""
    if rank == 0:
        return None
    axes = view.value(node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "axes", None)
    if axes is None or np.size(axes) != 1:
        return None
    return int(np.ravel(axes)[0]) % rank


def _nonzero_terms(view: GraphView, tensor: str, axis: int, rank: int, terms: int) -> list[int]:
    """The indices along ``axis`` of the terms of ``tensor`` that are not zero by construction.

    ``tensor`` made by a ``Mul`` with a constant operand whose slice at index i of ``axis`` (after
    broadcasting to ``rank``) is all zero has term i zero for every finite other operand (the soft-argmin's
    ``p * arange(D)``).  Every term is kept when none or all of them are zero (an all-zero sum is no
    short sum to rewrite)."""
    every = list(range(terms))
    node = view.producer_node(tensor)
    if node is None or node.op_type != "Mul" or node.domain:
        return every
    for operand in node.input[:2]:
        value = view.value(operand)
        if value is None or np.ndim(value) > rank or not np.issubdtype(np.asarray(value).dtype, np.floating):
            continue
        value = np.reshape(value, (1,) * (rank - np.ndim(value)) + np.shape(value))
        if value.shape[axis] != terms:
            continue
        kept = [i for i in every if np.any(np.take(value, i, axis=axis) != 0)]
        if kept:
            return kept
    return every


def _slices_and_adds(graph: onnx.GraphProto, node: onnx.NodeProto, axis: int, terms: list[int],
                     keep: bool) -> list:
    """The nodes of the sum of ``terms`` (indices along ``axis``): a width-1 ``Slice`` per term, adds left
    to right, a ``Squeeze`` for ``keepdims`` 0; the last node writes ``node``'s output under its name;
    constants go to ``graph``."""
    name = node.name or node.output[0]
    graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), f"{name}/axes"))
    nodes, total = [], ""
    for k, i in enumerate(terms):
        for key, value in (("starts", i), ("ends", i + 1)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{name}/term{i}/{key}"))
        only = len(terms) == 1
        term = node.output[0] if only and keep else f"{node.output[0]}/term{i}"
        nodes.append(helper.make_node("Slice", [node.input[0], f"{name}/term{i}/starts", f"{name}/term{i}/ends",
                                                f"{name}/axes"], [term], name=name if only and keep else f"{name}/term{i}"))
        if k == 0:
            total = term
            continue
        last = k == len(terms) - 1
        summed = node.output[0] if last and keep else f"{node.output[0]}/sum{i}"
        nodes.append(helper.make_node("Add", [total, term], [summed], name=name if last and keep else f"{name}/add{i}"))
        total = summed
    if not keep:
        nodes.append(helper.make_node("Squeeze", [total, f"{name}/axes"], [node.output[0]], name=name))
    return nodes
