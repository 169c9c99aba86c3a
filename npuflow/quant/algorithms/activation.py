"""The activation fused behind a weight layer, as a function AdaRound can reconstruct through.

On a DPU the activation after a convolution (ReLU, ReLU6, hard-swish, hard-sigmoid) runs inside the
convolution: the layer's accumulator goes through the activation and only then is quantized.  In
the QDQ model that is an elementwise chain from the layer's output to the next quantize step,
e.g. PP-OCRv4's hard-swish ``y * Clip(y + 3, 0, 6) * 0.1667`` with no quantize step in between.
Reconstructing the layer's *pre*-activation output (the default) also spends the rounding budget
on values the activation throws away (a ReLU's negative outputs, a hard-swish's outputs below -3);
AMD Quark's fast finetune reconstructs after an activation that directly follows the layer (ReLU,
Clip, Sigmoid, ...; not hard-swish, which its graph quantizes before).  ``fast_finetune:
{post_activation: true}`` does that here, through every fused chain.  Measured on
DPUCZDX8G_ISA1_B4096 (docs/accuracy.md, held-out data, means over batch-order seeds): at the default
500 iterations per layer PP-OCRv4 rec (hard-swish) reads 77.1 % lines against 70.6 % (3 seeds, every
post-activation seed above every pre-activation one), EfficientNet-Lite0 (ReLU6) 86.2 % against 86.7 %
FP32 top-1 agreement (2 seeds); at 100 iterations rec 59.3 against 61.4 % (4 seeds, within their
spread) and EfficientNet-Lite0 83.7 against 86.8 % (2 seeds).  It is off by default because it
costs EfficientNet-Lite0 on every seed measured.

:func:`fused_activation` finds the chain (elementwise ops whose other inputs are scalar constants,
with a single tensor leaving it) and returns an :class:`Activation` that evaluates it together
with its derivative (forward-mode: every value carries ``d value / d y``), all in float32 as ONNX
Runtime computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ...graph import GraphView, attr, initializers
from ...operators import RECONSTRUCTED_ACTIVATION_OPS


Dual = tuple[np.ndarray, np.ndarray]  # (value, derivative with respect to the layer output)


@dataclass
class Activation:
    """The chain ``nodes`` (graph order) from tensor ``source`` to tensor ``output``; ``consts``
    holds the scalar constants its nodes read."""

    nodes: list[onnx.NodeProto]
    consts: dict[str, np.float32]
    source: str
    output: str

    @property
    def ops(self) -> list[str]:
        return [n.op_type for n in self.nodes]

    def __call__(self, y: np.ndarray) -> Dual:
        """``(f(y), f'(y))`` elementwise, float32."""
        y = np.asarray(y, dtype=np.float32)
        values: dict[str, Dual] = {self.source: (y, np.ones_like(y))}
        for node in self.nodes:
            # positional: an omitted optional input (Clip's min as "") stays a None in its place
            args = [None if not i else values[i] if i in values else (self.consts[i], np.float32(0)) for i in node.input]
            values[node.output[0]] = _apply(node, args)
        return values[self.output]

    def value(self, y: np.ndarray) -> np.ndarray:
        return self(y)[0]


def _apply(node: onnx.NodeProto, args: list[Dual | None]) -> Dual:
    """One elementwise op on dual numbers."""
    op, f32 = node.op_type, np.float32
    (a, da) = args[0]
    if op == "Add":
        (b, db) = args[1]
        return a + b, da + db
    if op == "Sub":
        (b, db) = args[1]
        return a - b, da - db
    if op == "Mul":
        (b, db) = args[1]
        return a * b, da * b + a * db
    if op == "Div":
        (b, db) = args[1]
        return a / b, (da * b - a * db) / (b * b)
    if op == "Relu":
        return np.maximum(a, f32(0)), da * (a > 0)
    if op == "Clip":
        lo = args[1][0] if len(args) > 1 and args[1] is not None else f32(attr(node, "min", -np.inf))
        hi = args[2][0] if len(args) > 2 and args[2] is not None else f32(attr(node, "max", np.inf))
        return np.clip(a, lo, hi), da * ((a > lo) & (a < hi))
    if op == "Sigmoid":
        s = (f32(1) / (f32(1) + np.exp(-a))).astype(np.float32)
        return s, da * s * (f32(1) - s)
    if op == "LeakyRelu":
        alpha = f32(attr(node, "alpha", 0.01))
        return np.where(a >= 0, a, alpha * a), da * np.where(a >= 0, f32(1), alpha)
    alpha, beta = (f32(attr(node, "alpha", 0.2)), f32(attr(node, "beta", 0.5))) if op == "HardSigmoid" \
        else (f32(1 / 6), f32(0.5))
    t = alpha * a + beta
    h, dh = np.clip(t, f32(0), f32(1)), alpha * ((t > 0) & (t < 1))
    if op == "HardSigmoid":
        return h, da * dh
    return a * h, da * (h + a * dh)  # HardSwish


def fused_activation(model: onnx.ModelProto, node: onnx.NodeProto) -> Activation | None:
    """The elementwise chain behind weight layer ``node``'s output, or ``None`` when there is none
    (its output goes straight to a quantize step, or to anything that is not such a chain: a
    residual add, a reshape, two consumers that do not meet again)."""
    source = node.output[0]
    view = GraphView(model)
    scalars = {k: np.float32(v.reshape(())) for k, v in _constants(model).items() if v.size == 1}
    region: set[str] = {source}
    chain: list[onnx.NodeProto] = []
    for n in model.graph.node:  # graph order is topological
        ins = [i for i in n.input if i]
        if (n.op_type in RECONSTRUCTED_ACTIVATION_OPS and n.domain in ("", "ai.onnx") and any(i in region for i in ins)
                and all(i in region or i in scalars for i in ins)):
            chain.append(n)
            region.add(n.output[0])
    exits = [t for t in region if any(c not in chain for c in view.consumer_nodes(t))]
    graph_outputs = {o.name for o in model.graph.output}
    exits += [t for t in region if t in graph_outputs and t not in exits]
    if not chain or len(exits) != 1 or exits[0] == source:
        return None
    used = {i for n in chain for i in n.input}
    chain = _upstream(chain, exits[0])
    if not chain:
        return None
    return Activation(chain, {k: v for k, v in scalars.items() if k in used}, source, exits[0])


def _upstream(chain: list[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The nodes of ``chain`` that ``output`` depends on, in order."""
    need, keep = {output}, []
    for n in reversed(chain):
        if n.output[0] in need:
            keep.append(n)
            need.update(n.input)
    return keep[::-1]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Single-value initializers and ``Constant`` node values by tensor name (weights are not
    converted: a large model's every weight as numpy for a few scalars would cost seconds)."""
    out = {name: onnx.numpy_helper.to_array(t) for name, t in initializers(model).items()
           if int(np.prod(t.dims)) == 1}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = onnx.numpy_helper.to_array(a.t)
    return out
