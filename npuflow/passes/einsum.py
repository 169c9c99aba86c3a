"""A two-operand ``Einsum`` that is a batched matrix product, written as ``Transpose -> MatMul``.

Attention written with ``torch.einsum`` (round 19's linear-attention ViT: ``bhnd,bhne->bhde``,
``bhnd,bhd->bhn``; a softmax attention's ``bhnd,bhmd->bhnm``) exports ``Einsum`` nodes, which no
target lowers: each ran in float on the CPU and split the network (LinViT: 9 nodes).  ``MatMul``
is lowered and quantized.  An equation with two operands, no ellipsis, no letter repeated within
an operand, one contracted letter (in both operands, not in the output), at most one free letter
per operand (in one operand and the output) and batch letters (in both operands and the output) is
``MatMul(A', B')`` with ``A'`` = A transposed to [batch..., free_a, k] and ``B'`` = B transposed to
[batch..., k, free_b]; a missing free letter is a unit axis (``Unsqueeze`` before, ``Squeeze``
after), and a ``Transpose`` puts the product's axes in the output's order.  The same products and
sums in float, only the summation order may differ; transposes of identity order are left out.
Any other equation (three operands, a letter summed within one operand, a broadcast) is left as
it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import attr_values, unique_name
from ..model import default_opset
from .activations import _splice


@dataclass(frozen=True)
class _BatchedProduct:
    """The letters of an equation read as a batched product: ``a`` and ``b`` the operands' axis
    orders as the ``MatMul`` wants them, ``product`` the ``MatMul`` output's letters, ``out`` the
    equation's output letters; ``free_a``/``free_b`` empty where that operand has no free letter."""

    a_in: str
    b_in: str
    batch: str
    free_a: str
    free_b: str
    k: str
    out: str


def einsums_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with each batched-matrix-product ``Einsum`` as ``Transpose``/``MatMul``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    found = [(n, p) for n in graph.node if n.op_type == "Einsum" and not n.domain and len(n.input) == 2
             and (p := batched_product(str(attr_values(n).get("equation", "")))) is not None]
    opset = default_opset(out)
    for node, product in found:
        _splice(graph, [node], _matmul_nodes(graph, node, product, opset))
    return out


def batched_product(equation: str) -> _BatchedProduct | None:
    """The equation as a batched product, or None where it is not one (see the module docstring)."""
    eq = equation.replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    ins, out = eq.split("->")
    operands = ins.split(",")
    if len(operands) != 2 or not all(s.isalpha() for s in (*operands, out) if s):
        return None
    a, b = operands
    if any(len(set(s)) != len(s) for s in (a, b, out)):
        return None
    batch = "".join(c for c in out if c in a and c in b)
    k = [c for c in a if c in b and c not in out]
    free_a = "".join(c for c in a if c not in b)
    free_b = "".join(c for c in b if c not in a)
    if len(k) != 1 or len(free_a) > 1 or len(free_b) > 1 or set(out) != set(batch + free_a + free_b):
        return None
    return _BatchedProduct(a, b, batch, free_a, free_b, k[0], out)


def _matmul_nodes(graph: onnx.GraphProto, node: onnx.NodeProto, p: _BatchedProduct,
                  opset: int) -> list[onnx.NodeProto]:
    """``[Unsqueeze] -> Transpose`` per operand, ``MatMul``, ``[Squeeze] -> Transpose`` to the output."""
    name = node.name or node.output[0]
    nodes: list[onnx.NodeProto] = []

    def tensor(tag: str) -> str:
        return unique_name(graph, f"{name}/{tag}")

    def axes_input(tag: str, axes: list[int]) -> list[str]:
        if opset < 13:
            return []
        const = tensor(tag)
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), const))
        return [const]

    def operand(x: str, letters: str, order: str, unit_at: int | None, tag: str) -> str:
        """``x`` (axes ``letters``) as axes ``order``, a unit axis added at ``unit_at`` of ``order``."""
        if unit_at is not None:
            unsq = tensor(f"{tag}_unit")
            extra = {} if opset >= 13 else {"axes": [len(letters)]}
            nodes.append(helper.make_node("Unsqueeze", [x, *axes_input(f"{tag}_unit_axis", [len(letters)])], [unsq],
                                          name=f"{name}/{tag}_unsqueeze", **extra))
            x, letters = unsq, letters + "_"
            order = order[:unit_at] + "_" + order[unit_at:]
        perm = [letters.index(c) for c in order]
        if perm == sorted(perm):
            return x
        moved = tensor(f"{tag}_t")
        nodes.append(helper.make_node("Transpose", [x], [moved], name=f"{name}/{tag}_transpose", perm=perm))
        return moved

    n_batch = len(p.batch)
    a = operand(node.input[0], p.a_in, p.batch + p.free_a + p.k, None if p.free_a else n_batch, "a")
    b = operand(node.input[1], p.b_in, p.batch + p.k + p.free_b, None if p.free_b else n_batch + 1, "b")
    product_letters = p.batch + (p.free_a or "_") + (p.free_b or "_")
    product = tensor("matmul")
    nodes.append(helper.make_node("MatMul", [a, b], [product], name=name))
    units = [i for i, c in enumerate(product_letters) if c == "_"]
    if units:
        squeezed = tensor("squeezed")
        extra = {} if opset >= 13 else {"axes": units}
        nodes.append(helper.make_node("Squeeze", [product, *axes_input("unit_axes", units)], [squeezed],
                                      name=f"{name}/squeeze", **extra))
        product, product_letters = squeezed, product_letters.replace("_", "")
    perm = [product_letters.index(c) for c in p.out]
    if perm == sorted(perm):
        nodes[-1].output[0] = node.output[0]
    else:
        nodes.append(helper.make_node("Transpose", [product], [node.output[0]], name=f"{name}/out_transpose", perm=perm))
    return nodes
