"""A ``softmax`` op (cpu-int8's ``DQ -> Softmax -> Q``) inside a fused run, as exact float operations.

``numerics_softmax.softmax_codes`` is a lookup, an ordered float32 sum and elementwise float32 operations,
and each has an ONNX form that ONNX Runtime computes as numpy does: the exponential of every code
difference is ``GatherElements`` of the op's float32 table at ``q - max(q) + 255`` (``ReduceMax``
and ``Sub`` of codes: exact); the row's sum is the last element of ``CumSum``, which adds in order
as ``numpy.cumsum`` does (``ReduceSum`` adds in the order of its vectorised loops, so its float32
rounding could move a code); then ``Mul`` by ``floor(1 / scale)``, ``Div`` by the sum, ``Round``
(ties to even, as ``numpy.rint``) and ``Clip`` onto the output's codes.  So a fused attention
program (``matmul2 -> softmax -> matmul2``) stays one run, equal to its kernels byte for byte
(``tests/unit/test_newops3_softmax.py``); without this form the op ran as its kernel between two
fused runs.

ONNX Runtime's own ``com.microsoft.QLinearSoftmax`` is not this arithmetic on every row: on this
CPU (MLAS' qsoftmax kernels, ONNX Runtime 1.32) it differs by one code where a row's ratio lies
within a float32 rounding of a tie (rows of repeated maxima; ``benchmarks/results/softmax_s36.md``),
so it does not serve here.  A float64 table (16-bit codes, or two code types) normalises in float64,
which has no order-exact form: that op runs as its kernel.
"""

from __future__ import annotations

import numpy as np
from .. import numerics as nm
from .fused_graph import INDEX_TYPE, Graph, NotFusable, centred_clip, gather, slice_node


def softmax(g: Graph, op: dict, blobs: dict) -> None:
    """Write ``op`` as ``numerics_softmax.softmax_codes``' float32 operations (the module's docstring)."""
    a, x, out = op["attrs"], op["inputs"][0], op["outputs"][0]
    table = np.asarray(blobs["table"])
    if table.dtype != np.float32:
        raise NotFusable("softmax normalised in float64 (16-bit codes, or two code types)")
    if np.ndim(a["out_scale"]) or np.ndim(a["out_zp"]):
        raise NotFusable("softmax with a per-channel output scale")
    shape, axes = list(g.tensors[x]["shape"]), list(a["axes"])
    if axes != list(range(axes[0], axes[0] + len(axes))):
        raise NotFusable(f"softmax over axes {axes} that do not follow each other")
    axis = axes[0]
    v, _ = g.base(x)  # codes minus any offset: only differences are read
    rows = shape[:axis] + [int(np.prod(shape[axis:axes[-1] + 1]))] + shape[axes[-1] + 1:]
    if len(axes) > 1:  # opset < 13: the axes flattened into one, in order
        v = g.node("Reshape", [v, g.const(rows, np.int64)])
    top = g.node("ReduceMax", [v, g.const([axis], np.int64)], keepdims=1)
    index = g.node("Cast", [g.node("Add", [g.node("Sub", [v, top]), g.const(table.size - 1)])], to=INDEX_TYPE)
    e = gather(g, index, g.const(table, np.float32))
    total = slice_node(g, g.node("CumSum", [e, g.scalar(axis, np.int64)]),
                       [[0, n, 1] if k != axis else [n - 1, n, 1] for k, n in enumerate(rows)])
    inv = np.float32(np.floor(np.float32(1.0) / np.float32(a["out_scale"])))
    y = g.node("Round", [g.node("Div", [g.node("Mul", [e, g.const(inv)]), total])])
    lo, hi = nm.qrange(a["bits"], a["signed"])
    y, offset = centred_clip(g, y, int(a["out_zp"]), lo, hi, np.float32)
    if len(axes) > 1:
        y = g.node("Reshape", [y, g.const(shape, np.int64)])
    g.put(out, y, offset)

