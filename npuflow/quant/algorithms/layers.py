"""Weight layers of a float or QDQ model, as the accuracy algorithms read and write them.

A *weight layer* is a ``Conv``, ``Gemm`` or ``MatMul`` whose weight is a constant read by it
alone.  CLE, bias correction, AdaRound and AdaQuant read and write its weights as numpy arrays
in one layout, ``(Cout, Cin/groups, *kernel)``, whatever the op stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...graph import GraphView, attr, get_array, set_array


@dataclass
class WeightLayer:
    """A Conv/Gemm/MatMul node with a constant weight, seen as ``(Cout, Cin/groups, *kernel)``."""

    node: onnx.NodeProto
    weight: str          # name of the tensor feeding the weight input (initializer or DQ output)
    bias: str | None
    groups: int
    trans_b: bool = False  # Gemm(transB=0)/MatMul store (Cin, Cout); we always hand out (Cout, Cin)

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def is_depthwise(self) -> bool:
        return self.node.op_type == "Conv" and self.groups > 1


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Conv/Gemm/MatMul nodes whose weight is an initializer, in graph (topological) order.

    Initializers used by more than one node are left out: changing them for one layer would
    silently change another.
    """
    view = GraphView(model)
    inits = view.inits
    layers = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if n.op_type != "Conv" and (attr(n, "transA", 0) or len(inits[n.input[1]].dims) != 2):
            continue
        if len(view.consumers.get(n.input[1], ())) != 1:
            continue
        bias = n.input[2] if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2] in inits else None
        if bias is not None and len(view.consumers.get(bias, ())) != 1:
            continue
        layers.append(WeightLayer(
            n, n.input[1], bias, int(attr(n, "group", 1)) if n.op_type == "Conv" else 1,
            trans_b=bool(attr(n, "transB", 0)) if n.op_type == "Gemm" else n.op_type == "Conv",
        ))
    return layers


def layer_weight(model: onnx.ModelProto, layer: WeightLayer) -> np.ndarray:
    """Weight as ``(Cout, Cin/groups, *kernel)`` float32 (Gemm: ``(Cout, Cin)``)."""
    w = get_array(model, layer.weight).astype(np.float32)
    return w if layer.trans_b else w.T.copy()


def set_layer_weight(model: onnx.ModelProto, layer: WeightLayer, w: np.ndarray) -> None:
    set_array(model, layer.weight, w if layer.trans_b else w.T)


def layer_bias(model: onnx.ModelProto, layer: WeightLayer, cout: int) -> np.ndarray:
    if layer.bias is None:
        return np.zeros(cout, np.float32)
    return get_array(model, layer.bias).astype(np.float32).reshape(-1)


def set_layer_bias(model: onnx.ModelProto, layer: WeightLayer, b: np.ndarray) -> None:
    """Write a bias, adding a bias input (and initializer) to the node when it had none."""
    if layer.bias is None:
        name = f"{layer.name}.npuflow_bias"
        model.graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), name))
        if layer.node.op_type == "Gemm":
            if len(layer.node.input) == 2:
                layer.node.input.append(name)
            else:
                layer.node.input[2] = name
        else:
            layer.node.input.append(name)
        layer.bias = name
    else:
        set_array(model, layer.bias, b)
