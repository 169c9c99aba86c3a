"""The quantized operands and results of a node, as every ``lower_*`` function reads them.

Each helper returns the integer tensor, its :class:`QParams` and the dequantize (or quantize) step
behind a float tensor of the quantized model, or raises :class:`Reject` with the reason the node
stays ONNX (``compiler/lowering.py`` turns it into the CPU note).  Kept apart from the lowerings so
that module stays one screen per op family.
"""

from __future__ import annotations

import numpy as np
import onnx

from .epilogue import collect_chain
from .qgraph import QGraph, QParams


class Reject(Exception):
    """A node cannot be lowered (the message says why)."""


def per_tensor_source(g: QGraph, name: str) -> tuple[str, QParams, onnx.NodeProto]:
    """``(integer tensor, params, DequantizeLinear)`` behind ``name``, quantized per tensor."""
    src = g.dq_source(name)
    if src is None:
        raise Reject(f"input {name!r} is not a dequantized integer tensor")
    if not src[1].per_tensor:
        raise Reject(f"input {name!r} is quantized per channel")
    return src


def act(g: QGraph, name: str) -> tuple[str, QParams, onnx.NodeProto]:
    int_name, p, dq = per_tensor_source(g, name)
    if p.bits not in (8, 16):
        raise Reject(f"input {name!r} is {p.dtype}")
    return int_name, p, dq


def weight(g: QGraph, name: str) -> tuple[np.ndarray, QParams, onnx.NodeProto]:
    src = g.dq_source(name)
    if src is None or g.const(src[0]) is None:
        raise Reject(f"constant {name!r} is not a quantized initializer")
    int_name, p, dq = src
    if np.any(p.zero_point != 0):
        raise Reject(f"constant {name!r} has a non-zero zero point")
    return g.const(int_name), p, dq


def operand(g: QGraph, name: str) -> tuple[str | None, np.ndarray | None, QParams, onnx.NodeProto]:
    """An activation or a quantized constant (``(None, values, params, dq)`` for a constant)."""
    int_name, p, dq = per_tensor_source(g, name)
    c = g.const(int_name)
    return (None, c, p, dq) if c is not None else (int_name, None, p, dq)


def chain(g: QGraph, t0: str) -> tuple[list[onnx.NodeProto], onnx.NodeProto, QParams]:
    found = collect_chain(g, t0, list(g.consumer_nodes(t0)))
    if found is None:
        raise Reject(f"output {t0!r} does not reach a single quantize step")
    p = found[2]
    if p.bits not in (8, 16):
        raise Reject(f"output {t0!r} is quantized to {p.dtype}")
    return found


def shape(g: QGraph, name: str) -> list[int]:
    s = g.shapes.get(name)
    if s is None:
        raise Reject(f"tensor {name!r} has no static shape")
    return list(s)
