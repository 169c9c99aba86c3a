"""Target rewrite: a linear ``Resize`` with ``align_corners`` coordinates as products with its
interpolation matrices.

Fast-SCNN's pyramid (bins of 2, 3, 6 back to the map), its x4 fusion and its x8 head, and many
segmentation nets' ``F.interpolate(..., align_corners=True)``, read ``x_in = o (n - 1) / (m - 1)``:
from ``n`` to ``m`` values no fixed kernel samples that unless ``m - 1 = s (n - 1)``
(:mod:`.resize_linear` writes those as a depthwise ConvTranspose), so each stayed a float ``Resize``
on the CPU on every target (round 23a: four per target).  Vitis AI's DPU resize takes
``align_corner=false`` only (UG1414's operator table), and Horizon's table names no coordinate mode.

Each output value along one axis is ``(1 - f) x[i] + f x[i + 1]`` with ``i``, ``f`` fixed by ``o``: a
constant ``m x n`` matrix ``A`` per axis, so the resize is ``x @ A_w^T`` over the last axis and, for a
map, the same over H between two ``Transpose``s (0, 1, 3, 2).  A ``MatMul`` with a constant operand is
a layer every target here quantizes and lowers; the form is exact in float (ONNX Runtime's ``Resize``
to ~1e-6), and quantization rounds the interpolation weights to the target's weight grid (an 8-bit
power-of-two scale holds ``k / 128``: at most ``2^-8`` off) and the map between the two products once,
so the quantized model differs from a float resize as any layer's weights do; the compiled model equals
ONNX Runtime on it.  It is written only where the target runs every new node (its ``matmul`` /
``transpose`` rules, judged as check judges them): bernoulli2 has no transpose, so a 2-D resize stays
there (a 1-D one, on the last axis alone, needs none).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import unique_name
from ..targets import Target
from .activations import _splice
from .wide_conv import node_reasons, shaped_view


def corner_matrix(n: int, m: int) -> np.ndarray:
    """The ``m x n`` matrix of ``align_corners`` linear interpolation from ``n`` to ``m`` values."""
    a = np.zeros((m, n), np.float64)
    for o in range(m):
        x = o * (n - 1) / (m - 1) if m > 1 else 0.0
        i = min(int(np.floor(x)), n - 1)
        f = x - i
        a[o, i] += 1.0 - f
        if f > 0:
            a[o, i + 1] += f
    return a.astype(np.float32)


def corner_resize_as_matmuls(model: onnx.ModelProto, resize: str, xs: list, sizes: list[int],
                             target: Target) -> str | None:
    """Rewrite in place the ``Resize`` making tensor ``resize`` (input shape ``xs``, output spatial
    ``sizes``) as the products of the module docstring where ``target`` runs every new node; ``None``
    when done, else the target's objections."""
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    node = next(n for n in trial.graph.node if n.output and n.output[0] == resize)
    new = _as_matmuls(trial.graph, node, xs, sizes)
    view = shaped_view(trial)
    why: list[str] = []
    for n in new:
        for r in node_reasons(view.producer_node(n.output[0]), view, target):
            r = r if r.startswith(n.op_type) else f"{n.op_type} {r}"
            why += [] if r in why else [r]
    if why:
        return "; ".join(why)
    model.CopyFrom(trial)
    return None


def _as_matmuls(graph: onnx.GraphProto, node: onnx.NodeProto, xs: list, sizes: list[int]) -> list[onnx.NodeProto]:
    """Replace ``node`` by the W product, then the H product between transposes (rank 4, H resized),
    with the value infos of the tensors between them (check reads shapes)."""
    name = node.name or node.output[0]
    rank, elem = len(xs), onnx.TensorProto.FLOAT
    spatial = list(xs[2:])
    steps = [(rank - 1, sizes[-1])] if sizes[-1] != spatial[-1] else []
    if rank == 4 and sizes[0] != spatial[0]:
        steps.append((2, sizes[0]))
    new, infos, x, shape = [], [], node.input[0], list(xs)
    for k, (axis, m) in enumerate(steps):
        last = k == len(steps) - 1
        weight = unique_name(graph, f"{name}/interp{axis}")
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(corner_matrix(shape[axis], m).T), weight))
        y = node.output[0] if last else unique_name(graph, f"{name}/axis{axis}")
        if axis == rank - 1:
            new.append(helper.make_node("MatMul", [x, weight], [y], name=name if last else y))
            shape[axis] = m
        else:
            swapped, product = (unique_name(graph, f"{name}/{s}{axis}") for s in ("swap", "product"))
            new += [helper.make_node("Transpose", [x], [swapped], name=swapped, perm=[0, 1, 3, 2]),
                    helper.make_node("MatMul", [swapped, weight], [product], name=product),
                    helper.make_node("Transpose", [product], [y], name=name if last else y, perm=[0, 1, 3, 2])]
            infos += [helper.make_tensor_value_info(swapped, elem, [shape[0], shape[1], shape[3], shape[2]]),
                      helper.make_tensor_value_info(product, elem, [shape[0], shape[1], shape[3], m])]
            shape[axis] = m
        if not last:
            infos.append(helper.make_tensor_value_info(y, elem, list(shape)))
        x = y
    _splice(graph, [node], new)
    graph.value_info.extend(infos)
    return new
