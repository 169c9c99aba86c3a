"""A ``Transpose`` that moves only size-1 axes is a ``Reshape``.

ECA-Net's channel attention (round 23a) pools to ``(N, C, 1, 1)``, squeezes to ``(N, C, 1)``, swaps the
last two axes to run a ``Conv1d`` across channels (``(N, 1, C)``) and swaps them back: the data never
moves, yet bernoulli2 (no transpose) ran both swaps, and the ops between them, in float on the CPU.
When the axes of size other than 1 keep their order, the transpose is the same bytes under another
shape: a ``Reshape`` to the transposed shape (a symbolic dimension only where the permutation leaves
it in place, written as ``0``: copy it).  Exact; every target runs a reshape at least as readily as a
transpose.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import attr, remove_unused_initializers
from ..value_info import named_dims


def unit_axis_transposes_as_reshape(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with every such ``Transpose`` a ``Reshape`` (the model itself when none is)."""
    dims = None
    out = None
    for k, node in enumerate(model.graph.node):
        if node.op_type != "Transpose" or node.domain:
            continue
        dims = named_dims(model) if dims is None else dims
        shape = _reshape_to(dims.get(node.input[0]), attr(node, "perm"))
        if shape is None:
            continue
        if out is None:
            out = onnx.ModelProto()
            out.CopyFrom(model)
        new = out.graph.node[k]
        target = f"{new.output[0]}/shape"
        out.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), target))
        new.op_type = "Reshape"
        del new.attribute[:]
        new.input.append(target)
    if out is None:
        return model
    remove_unused_initializers(out.graph)
    return out


def _reshape_to(dims: tuple | None, perm: list[int] | None) -> list[int] | None:
    """The ``Reshape`` shape equal to transposing ``dims`` by ``perm``, or ``None`` when it moves data."""
    if not dims or perm is None or sorted(perm) != list(range(len(dims))):
        return None
    if any(not isinstance(d, int) and perm[i] != i for i, d in enumerate(dims)):
        return None  # a symbolic dimension that moves: no constant shape says where it goes
    moved = [a for a in perm if dims[a] != 1]
    if moved != sorted(moved):
        return None
    return [0 if not isinstance(dims[a], int) else dims[a] for a in perm]
