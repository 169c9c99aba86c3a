"""Seams of a joined graph between a CPU part's codes and a fused run's bytes: one quantize or dequantize step.

A CPU subgraph writes its output as int8 codes (``QuantizeLinear`` of its scale and zero point); a fused
run that reads them as ONNX Runtime's uint8 operands turns them into its own form with
``Cast(float) -> Add(128) -> Cast(uint8)``.  Joined (``runtime/joined.py``), those three nodes stand in
one graph next to the quantize step that made the bytes, and ONNX Runtime runs them as three kernels
(EfficientFormer-style net on bernoulli2: 7 such seams, 62 ``Cast`` nodes in its optimised joined graph
where ORT's plain QDQ model has none).  ``QuantizeLinear`` of the same input and scale with the zero point
raised by 128 to a uint8 one makes those uint8 bytes directly, exactly: ONNX Runtime divides by the same
scale and rounds the same quotient to even, and clamping ``q + zp`` to [-128, 127] then adding 128 is
clamping ``q + zp + 128`` to [0, 255].

The other direction, a fused run's uint8 bytes handed to a CPU part as int8 codes through
``Cast(float) -> Add(-128) -> Cast(int8)`` (its LayerNorm's ``DequantizeLinear``, and a residual's next fused
run casting them back with ``Add(128)``), is :func:`one_dequantize_step`: the dequantize step reads the bytes
with zero point + 128 and the next run reads the bytes themselves (6 seams there, 27 nodes).

:func:`one_quantize_step` writes that form; ``joined._joined`` keeps it (and :func:`one_dequantize_step`'s,
checked on its own) only where ONNX Runtime's optimised
graph of it runs the joined graph's kernels less the nodes it removed (``joined.same_but_seams``: no
fusion changes with it), but for the one-step round trips :func:`moved_round_trips` counts.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ..graph import GraphView, attr_values, with_nodes
from ..operators import OUTPUT_TYPE_OF_INPUT, SEAM_MOVES

_ZERO_POINT = "/u8_zero_point"  # the name of a quantize step's zero point written here, after its int8 step's output
_DQ_ZERO_POINT = "/u8_dq_zero_point_"  # of a dequantize step's zero point written here, after the int8 tensor it read


def one_quantize_step(model: onnx.ModelProto, external: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with each ``QuantizeLinear`` (int8, constant one-value scale and zero point) whose
    reader ``Cast(float) -> Add(128) -> Cast(uint8)`` chain is read nowhere else written as a uint8
    ``QuantizeLinear`` of zero point + 128 (module docstring; the int8 one dropped where nothing else reads
    it); ``model`` itself where it has no such seam."""
    view = GraphView(model)
    nodes, consts, readers = view.nodes, view.inits, view.consumers
    kept = set(view.graph_outputs)
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    zero_points: list[onnx.TensorProto] = []
    for k, q in enumerate(nodes):
        zp = _int8_step(q, consts, external)
        if zp is None:
            continue
        chains = [c for c in (_chain(nodes, r, readers, kept, consts, external) for r in readers.get(q.output[0], []))
                  if c is not None]
        name = f"{q.output[0]}{_ZERO_POINT}"
        for chain in chains:
            last = nodes[chain[-1]]
            replaced[chain[-1]] = onnx.helper.make_node("QuantizeLinear", [q.input[0], q.input[1], name], list(last.output),
                                                        name=f"{last.name}/u8")
            dropped.update(chain[:-1])
        if chains:
            shape = _array(q.input[2], consts, external).shape
            zero_points.append(onnx.numpy_helper.from_array(np.full(shape, zp + 128, np.uint8), name))
            if len(chains) == len(readers[q.output[0]]) and q.output[0] not in kept:
                dropped.add(k)
    if not replaced:
        return model
    return with_nodes(model, (replaced.get(k, n) for k, n in enumerate(nodes) if k not in dropped), zero_points)


def one_dequantize_step(model: onnx.ModelProto, external: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the other direction of a seam, a fused run's uint8 bytes ``x`` handed to a CPU part as
    int8 codes ``t = Cast(int8)(Cast(float)(x) - 128)``, read from ``x`` itself: each standard
    ``DequantizeLinear`` of ``t`` (int8 zero point ``z``) as one of ``x`` with uint8 zero point ``z + 128``
    (``(x - (z + 128)) * s`` is ``(t - z) * s``: the same integers times the same scale), and each
    ``Cast(float) -> Add(128) -> Cast(uint8)`` of ``t`` (a next fused run's operand bytes) as ``x`` itself;
    the three nodes of ``t`` dropped where nothing else reads it.  Exact where ``x`` is uint8 (every value
    in [0, 255], so ``x - 128`` lies in int8's range), which the node that made it says (:func:`_uint8`).
    EfficientFormer-style net on bernoulli2: 6 seams, 27 nodes fewer.  ``model`` itself where it has none."""
    view = GraphView(model)
    nodes, consts, readers = view.nodes, view.inits, view.consumers
    kept = set(view.graph_outputs)
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    renamed: dict[str, str] = {}
    zero_points: list[onnx.TensorProto] = []
    for k, first in enumerate(nodes):
        chain = _chain(nodes, k, readers, kept, consts, external, -128.0, onnx.TensorProto.INT8)
        if chain is None or made_type(view, first.input[0], external) != onnx.TensorProto.UINT8:
            continue
        x, t = first.input[0], nodes[chain[-1]].output[0]
        done = 0
        for r in readers.get(t, []):
            zp = _int8_step(nodes[r], consts, external, "DequantizeLinear")
            back = _chain(nodes, r, readers, kept, consts, external)
            if zp is not None and nodes[r].input[0] == t:
                name = f"{t}{_DQ_ZERO_POINT}{r}"
                zero_points.append(onnx.numpy_helper.from_array(
                    np.full(_array(nodes[r].input[2], consts, external).shape, zp + 128, np.uint8), name))
                replaced[r] = onnx.helper.make_node("DequantizeLinear", [x, nodes[r].input[1], name],
                                                    list(nodes[r].output), name=f"{nodes[r].name}/u8")
                done += 1
            elif back is not None and nodes[back[-1]].output[0] not in kept:
                renamed[nodes[back[-1]].output[0]] = x
                dropped.update(back)
                done += 1
        if done and done == len(readers[t]) and t not in kept:
            dropped.update(chain)
    if not replaced and not renamed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for k, n in enumerate(nodes):
        if k not in dropped:
            node = out.graph.node.add()
            node.CopyFrom(replaced.get(k, n))
            node.input[:] = [renamed.get(i, i) for i in node.input]
    out.graph.initializer.extend(zero_points)
    return out


def made_type(view: GraphView, name: str, external: dict | None = None) -> int | None:
    """Tensor ``name``'s element type (ONNX ``TensorProto`` code) by what made it: a constant or graph
    input's, a ``Cast``'s ``to``, or, for an op whose output has the type of one of its inputs
    (``operators.OUTPUT_TYPE_OF_INPUT``: a quantize step's zero point, a table's ``Gather``), that
    input's; None where that does not say."""
    while True:
        if name in view.inits:  # a constant's declared type (its data may be external)
            return view.inits[name].data_type
        if name in (external or {}):
            return onnx.helper.np_dtype_to_tensor_dtype(np.asarray(external[name]).dtype)
        made = view.producer_node(name)
        if made is None:
            return view.elem_type(name)
        key = ("" if made.domain == "ai.onnx" else made.domain, made.op_type)
        if key == ("", "Cast"):
            return attr_values(made).get("to")
        at = OUTPUT_TYPE_OF_INPUT.get(key)
        if at is None or len(made.input) <= at or not made.input[at] \
                or any(a.name == "output_dtype" for a in made.attribute):
            return None
        name = made.input[at]


def moved_round_trips(model: onnx.ModelProto, external: dict[str, np.ndarray],
                      exact: Callable[[float, int, int], bool]) -> int:
    """How many of the uint8 quantize steps :func:`one_quantize_step` wrote in ``model`` read a data movement
    (or dequantize steps :func:`one_dequantize_step` wrote are read by one)
    (``operators.SEAM_MOVES``: EfficientFormer's attention output, MatMul, Transpose, Reshape, then the step)
    with a round trip that gives back every code (``exact``: ``joined._round_trip_exact``).  ONNX Runtime
    moves such a step before the movement and drops the ``DequantizeLinear -> QuantizeLinear`` pair of that
    one step it leaves behind: quantizing is elementwise, so the bytes are the same.  (Of the int8 step it
    replaced, ONNX Runtime's int8 -> uint8 conversion kept one pair of each per step.)"""
    view = GraphView(model)
    consts = view.inits
    found = 0
    for n in view.nodes:
        if n.op_type == "QuantizeLinear":
            made = view.producer_node(n.input[0])
            moved = made is not None and n.input[2].endswith(_ZERO_POINT) and made.op_type in SEAM_MOVES
        else:  # the other direction: a uint8 dequantize step of one_dequantize_step read by a data movement,
            # where ONNX Runtime's int8 -> uint8 conversion had put a pair of that step (EdgeNeXt-style net)
            moved = n.op_type == "DequantizeLinear" and _DQ_ZERO_POINT in n.input[2] \
                and any(r.op_type in SEAM_MOVES for r in view.consumer_nodes(n.output[0]))
        if moved:
            scale, zp = (_array(t, consts, external) for t in n.input[1:])
            found += exact(float(scale.reshape(())), int(zp.reshape(())), onnx.TensorProto.UINT8)
    return found


def _chain(nodes: list[onnx.NodeProto], first: int, readers: dict[str, list[int]], kept: set[str],
           consts: dict, external: dict, add: float = 128.0, to: int = onnx.TensorProto.UINT8) -> list[int] | None:
    """The indices of ``Cast(float) -> Add(add) -> Cast(to)`` (by default ``Add(128) -> Cast(uint8)``) from
    node ``first``, each output but the last read only by the next node and not a graph output; else None."""
    cast = first
    if not _cast(nodes[cast], onnx.TensorProto.FLOAT) or not _only_reader(nodes[cast].output[0], readers, kept):
        return None
    add_at = readers[nodes[cast].output[0]][0]
    n = nodes[add_at]
    if n.op_type != "Add" or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
        return None
    other = n.input[1] if n.input[0] == nodes[cast].output[0] else n.input[0]
    value = _array(other, consts, external)
    if value is None or value.dtype != np.float32 or value.size != 1 or float(value.reshape(())) != add \
            or value.ndim > 1 or not _only_reader(n.output[0], readers, kept):
        return None
    back = readers[n.output[0]][0]
    return [cast, add_at, back] if _cast(nodes[back], to) else None


def _only_reader(name: str, readers: dict[str, list[int]], kept: set[str]) -> bool:
    return len(readers.get(name, [])) == 1 and name not in kept


def _cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and attr_values(node) == {"to": to}


def _int8_step(node: onnx.NodeProto, consts: dict, external: dict, op_type: str = "QuantizeLinear") -> int | None:
    """The int8 zero point of a standard ``op_type`` (``QuantizeLinear``) with a constant one-value float32
    scale and int8 zero point and no attribute but ``axis``; else None."""
    if node.op_type != op_type or node.domain not in ("", "ai.onnx") or len(node.input) != 3 \
            or any(a.name != "axis" for a in node.attribute):
        return None
    scale, zp = (_array(t, consts, external) for t in node.input[1:])
    if scale is None or zp is None or scale.size != 1 or scale.dtype != np.float32 or zp.dtype != np.int8 \
            or zp.size != 1:
        return None
    return int(zp.reshape(()))


def _array(name: str, consts: dict, external: dict) -> np.ndarray | None:
    """Constant ``name``'s value (from ``external`` where the graph declares it external)."""
    if name in external:
        return np.asarray(external[name])
    t = consts.get(name)
    if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return onnx.numpy_helper.to_array(t)
