"""Target legalisation of the float model: rewrite activations into the target's arithmetic.

Runs after float optimisation and before calibration (calibration must see what the chip
computes).  What changes, per ``target.numerics``:

* ``leaky_relu_slope`` set (DPU: 26/256): a ``LeakyRelu`` whose slope the target's ``leaky_relu``
  rule accepts (DPU: within 0.01 of 26/256) takes the hardware slope; any other slope stays, and
  the checker places that node on the CPU in float (replacing 0.2 by 26/256 would change the
  network's function, not round it);
* ``hard_sigmoid: dpu``: ``HardSigmoid(1/6, 1/2)`` becomes the DPU form
  ``Add(x, 3) -> Clip(0, 6) -> Mul(2731/16384)`` (nodes ``<name>/add``, ``<name>/clip`` and
  ``<name>``, which keeps the output tensor) and ``HardSwish`` becomes that chain on ``x`` followed
  by ``Mul(x, hsig)`` named ``<name>``.

The exact forms are part of docs/quantized-model-format.md.  Node names and the output tensor
names of rewritten nodes are kept, so calibration statistics and reports line up with the float
model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..activation_patterns import is_standard_hard_sigmoid
from ..operators import DPU_HSIGMOID_SCALE, HSIGMOID_DIVISOR, HSIGMOID_OFFSET
from ..graph import attr, set_attr
from ..targets import Target
from ..targets.judge import rule_reasons


def legalize(model: onnx.ModelProto, target: Target) -> onnx.ModelProto:
    """A new model in the target's arithmetic (a copy when nothing applies)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    n = target.numerics
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.op_type == "LeakyRelu" and n.leaky_relu_slope is not None and _slope_runs(node, target):
            set_attr(node, "alpha", float(n.leaky_relu_slope))
        if n.hard_sigmoid == "dpu" and is_standard_hard_sigmoid(node):
            nodes += _dpu_hsigmoid(out.graph, node.name or node.output[0], node.input[0], node.output[0])
            continue
        if n.hard_sigmoid == "dpu" and node.op_type == "HardSwish":
            name = node.name or node.output[0]
            hsig = f"{name}/hsig"
            nodes += _dpu_hsigmoid(out.graph, hsig, node.input[0], hsig, prefix=name)
            nodes.append(helper.make_node("Mul", [node.input[0], hsig], [node.output[0]], name=name))
            continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _slope_runs(node: onnx.NodeProto, target: Target) -> bool:
    """Whether the target's LeakyReLU rule accepts this node's own slope (the checker's test)."""
    rule = target.rule("leaky_relu")
    alpha = float(attr(node, "alpha", 0.01))
    return rule is not None and not rule_reasons(rule, {"alpha": alpha}, target.hardware_names())


def _dpu_hsigmoid(graph: onnx.GraphProto, name: str, x: str, y: str, prefix: str | None = None) -> list[onnx.NodeProto]:
    """``relu6(x + 3) * 2731/16384`` as three nodes; the last is named ``name`` and writes ``y``."""
    p = prefix or name
    consts = {"three": HSIGMOID_OFFSET, "zero": 0.0, "six": HSIGMOID_DIVISOR, "scale": DPU_HSIGMOID_SCALE}
    for key, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), f"{p}/{key}"))
    return [
        helper.make_node("Add", [x, f"{p}/three"], [f"{p}/add"], name=f"{p}/add"),
        helper.make_node("Clip", [f"{p}/add", f"{p}/zero", f"{p}/six"], [f"{p}/clip"], name=f"{p}/clip"),
        helper.make_node("Mul", [f"{p}/clip", f"{p}/scale"], [y], name=name),
    ]
