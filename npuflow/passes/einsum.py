"""An ``Einsum`` of batched matrix products and elementwise products, written as ``MatMul``/``Mul``.

Attention written with ``torch.einsum`` (round 19's linear-attention ViT: ``bhnd,bhne->bhde``,
``bhnd,bhd->bhn``; a softmax attention's ``bhnd,bhmd->bhnm``) exports ``Einsum`` nodes, which no
target lowers: each ran in float on the CPU and split the network (LinViT: 9 nodes).  ``MatMul``
is lowered and quantized.  An equation with two operands, no ellipsis, no letter repeated within
an operand, one contracted letter (in both operands, not in the output), at most one free letter
per operand (in one operand and the output) and batch letters (in both operands and the output) is
``MatMul(A', B')`` with ``A'`` = A transposed to [batch..., free_a, k] and ``B'`` = B transposed to
[batch..., k, free_b]; a missing free letter is a unit axis (``Unsqueeze`` before, ``Squeeze``
after), and a ``Transpose`` puts the product's axes in the output's order.  Two operands with no
contracted letter whose letters together are the output's (``bhne,bhn->bhne``) are a broadcast
``Mul``.  Three operands (linear attention's ``bhnd,bhde,bhn->bhne``: the numerator times the
normaliser) are two such steps: the first pair, in the first order of the three pairings where both
steps are products, keeps the letters the third operand or the output still needs.  The same
products and sums in float, only the summation order may differ; transposes of identity order are
left out.  Any other equation (four operands, a letter summed within one operand, ellipsis) is left
as it is.
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
    """A new model with each product ``Einsum`` (see the module docstring) as ``MatMul``/``Mul``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    found = [(n, steps) for n in graph.node if n.op_type == "Einsum" and not n.domain
             and (steps := product_steps(str(attr_values(n).get("equation", "")))) is not None]
    opset = default_opset(out)
    for node, steps in found:
        _splice(graph, [node], _steps_nodes(graph, node, steps, opset))
    return out


@dataclass(frozen=True)
class Steps:
    """An equation as two-operand products: ``equations[0]`` multiplies the node's inputs
    ``order[0]`` and ``order[1]``; a second equation multiplies that result by input ``order[2]``."""

    equations: tuple[str, ...]
    order: tuple[int, ...]


def product_steps(equation: str) -> Steps | None:
    """The chain of batched or elementwise products that computes ``equation``, or None."""
    parsed = _parse(equation)
    if parsed is None:
        return None
    operands, out = parsed
    if len(operands) == 2:
        eq = f"{operands[0]},{operands[1]}->{out}"
        return Steps((eq,), (0, 1)) if _is_product(eq) else None
    if len(operands) != 3:
        return None
    for i, j, rest in ((0, 1, 2), (0, 2, 1), (1, 2, 0)):
        pair = operands[i] + "".join(c for c in operands[j] if c not in operands[i])
        kept = "".join(c for c in pair if c in operands[rest] or c in out)
        first, second = f"{operands[i]},{operands[j]}->{kept}", f"{kept},{operands[rest]}->{out}"
        if _is_product(first) and _is_product(second):
            return Steps((first, second), (i, j, rest))
    return None


def _parse(equation: str) -> tuple[list[str], str] | None:
    """Operands' and output's letters of an explicit equation without ellipsis or repeated letters."""
    eq = equation.replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    ins, out = eq.split("->")
    operands = ins.split(",")
    if not all(s.isalpha() for s in (*operands, out) if s) or any(len(set(s)) != len(s) for s in (*operands, out)):
        return None
    return operands, out


def _is_product(equation: str) -> bool:
    return batched_product(equation) is not None or elementwise_product(equation) is not None


def elementwise_product(equation: str) -> tuple[str, str, str] | None:
    """``(a, b, out)`` where the two-operand equation sums nothing: a broadcast ``Mul``."""
    parsed = _parse(equation)
    if parsed is None or len(parsed[0]) != 2:
        return None
    (a, b), out = parsed
    return (a, b, out) if set(out) == set(a) | set(b) else None


def batched_product(equation: str) -> _BatchedProduct | None:
    """The equation as a batched product, or None where it is not one (see the module docstring)."""
    parsed = _parse(equation)
    if parsed is None or len(parsed[0]) != 2:
        return None
    (a, b), out = parsed
    batch = "".join(c for c in out if c in a and c in b)
    k = [c for c in a if c in b and c not in out]
    free_a = "".join(c for c in a if c not in b)
    free_b = "".join(c for c in b if c not in a)
    if len(k) != 1 or len(free_a) > 1 or len(free_b) > 1 or set(out) != set(batch + free_a + free_b):
        return None
    return _BatchedProduct(a, b, batch, free_a, free_b, k[0], out)


def _steps_nodes(graph: onnx.GraphProto, node: onnx.NodeProto, steps: Steps,
                 opset: int) -> list[onnx.NodeProto]:
    """The nodes of each two-operand step, the first step's result feeding the second."""
    name = node.name or node.output[0]
    first_inputs = [node.input[steps.order[0]], node.input[steps.order[1]]]
    if len(steps.equations) == 1:
        return _Writer(graph, name, opset).product(steps.equations[0], first_inputs, node.output[0])
    kept = unique_name(graph, f"{name}/pair")
    first = _Writer(graph, f"{name}/pair", opset).product(steps.equations[0], first_inputs, kept)
    second_inputs = [kept, node.input[steps.order[2]]]
    return first + _Writer(graph, name, opset).product(steps.equations[1], second_inputs, node.output[0])


class _Writer:
    """Writes one two-operand product step as ONNX nodes named after ``name``."""

    def __init__(self, graph: onnx.GraphProto, name: str, opset: int) -> None:
        self.graph, self.name, self.opset = graph, name, opset
        self.nodes: list[onnx.NodeProto] = []

    def product(self, equation: str, inputs: list[str], output: str) -> list[onnx.NodeProto]:
        matmul = batched_product(equation)
        if matmul is not None:
            self._matmul(matmul, inputs, output)
        else:
            a, b, out = elementwise_product(equation)  # type: ignore[misc]  # product_steps checked it
            self._mul(a, b, out, inputs, output)
        return self.nodes

    def _tensor(self, tag: str) -> str:
        return unique_name(self.graph, f"{self.name}/{tag}")

    def _axes_input(self, tag: str, axes: list[int]) -> list[str]:
        if self.opset < 13:
            return []
        const = self._tensor(tag)
        self.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), const))
        return [const]

    def _unsqueeze(self, x: str, axes: list[int], tag: str) -> str:
        unsq = self._tensor(f"{tag}_unit")
        extra = {} if self.opset >= 13 else {"axes": axes}
        self.nodes.append(helper.make_node("Unsqueeze", [x, *self._axes_input(f"{tag}_unit_axis", axes)], [unsq],
                                           name=f"{self.name}/{tag}_unsqueeze", **extra))
        return unsq

    def _transpose(self, x: str, letters: str, order: str, tag: str, output: str | None = None) -> str:
        """``x`` (axes ``letters``) as axes ``order``; ``x`` itself where the order is the same."""
        perm = [letters.index(c) for c in order]
        if perm == sorted(perm) and output is None:
            return x
        moved = output or self._tensor(f"{tag}_t")
        self.nodes.append(helper.make_node("Transpose", [x], [moved], name=f"{self.name}/{tag}_transpose", perm=perm))
        return moved

    def _operand(self, x: str, letters: str, order: str, unit_at: int | None, tag: str) -> str:
        """``x`` (axes ``letters``) as axes ``order``, a unit axis added at ``unit_at`` of ``order``."""
        if unit_at is not None:
            x, letters = self._unsqueeze(x, [len(letters)], tag), letters + "_"
            order = order[:unit_at] + "_" + order[unit_at:]
        return self._transpose(x, letters, order, tag)

    def _finish(self, product: str, letters: str, out: str, output: str) -> None:
        """Rename the last node's output to ``output``, or ``Transpose`` into the output's order."""
        if [letters.index(c) for c in out] == sorted(range(len(out))):
            self.nodes[-1].output[0] = output
        else:
            self._transpose(product, letters, out, "out", output)

    def _matmul(self, p: _BatchedProduct, inputs: list[str], output: str) -> None:
        """``[Unsqueeze] -> Transpose`` per operand, ``MatMul``, ``[Squeeze] -> Transpose`` to the output."""
        n_batch = len(p.batch)
        a = self._operand(inputs[0], p.a_in, p.batch + p.free_a + p.k, None if p.free_a else n_batch, "a")
        b = self._operand(inputs[1], p.b_in, p.batch + p.k + p.free_b, None if p.free_b else n_batch + 1, "b")
        letters = p.batch + (p.free_a or "_") + (p.free_b or "_")
        product = self._tensor("matmul")
        self.nodes.append(helper.make_node("MatMul", [a, b], [product], name=self.name))
        units = [i for i, c in enumerate(letters) if c == "_"]
        if units:
            squeezed = self._tensor("squeezed")
            extra = {} if self.opset >= 13 else {"axes": units}
            self.nodes.append(helper.make_node("Squeeze", [product, *self._axes_input("unit_axes", units)], [squeezed],
                                               name=f"{self.name}/squeeze", **extra))
            product, letters = squeezed, letters.replace("_", "")
        self._finish(product, letters, p.out, output)

    def _mul(self, a: str, b: str, out: str, inputs: list[str], output: str) -> None:
        """Each operand in the output's letter order with unit axes where it lacks a letter, ``Mul``."""
        aligned = []
        for x, letters, tag in ((inputs[0], a, "a"), (inputs[1], b, "b")):
            x = self._transpose(x, letters, "".join(c for c in out if c in letters), tag)
            missing = [i for i, c in enumerate(out) if c not in letters]
            aligned.append(self._unsqueeze(x, missing, tag) if missing else x)
        product = self._tensor("mul")
        self.nodes.append(helper.make_node("Mul", aligned, [product], name=self.name))
        self._finish(product, out, out, output)
