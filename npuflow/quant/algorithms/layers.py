"""Weight layers of a float or QDQ model, as the accuracy algorithms read and write them.

A *weight layer* is a ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul`` whose weight is a
constant read by it alone.  CLE, bias correction, AdaRound and AdaQuant read and write its weights
as numpy arrays in one layout, ``(Cout, Cin/groups, *kernel)``, whatever the op stores.  A
``ConvTranspose`` (stored ``(Cin, Cout/groups, *kernel)``) is handed out as the weight of the
convolution it equals (:func:`transposed_conv_rows`): a transposed convolution is a stride-1
convolution, with the kernel flipped and the channel axes swapped per group, of its input with
``stride - 1`` zeros between neighbours (:class:`.patches.PatchSampler` builds those inputs), so the
per-output-row problems of AdaRound, AdaQuant and GPTQ need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...graph import GraphView, attr, get_array, set_array
from ...operators import WEIGHTED_OPS


@dataclass
class WeightLayer:
    """A Conv/ConvTranspose/Gemm/MatMul node with a constant weight, seen as ``(Cout, Cin/groups, *kernel)``."""

    node: onnx.NodeProto
    weight: str          # name of the tensor feeding the weight input (initializer or DQ output)
    bias: str | None
    groups: int
    trans_b: bool = False  # Gemm(transB=0)/MatMul store (Cin, Cout); we always hand out (Cout, Cin)

    @property
    def transposed(self) -> bool:
        return self.node.op_type == "ConvTranspose"

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def is_depthwise(self) -> bool:
        return self.node.op_type == "Conv" and self.groups > 1


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Conv/ConvTranspose/Gemm/MatMul nodes whose weight is an initializer, in graph (topological) order.

    Initializers used by more than one node are left out: changing them for one layer would
    silently change another.
    """
    view = GraphView(model)
    inits = view.inits
    layers = []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        conv = n.op_type in ("Conv", "ConvTranspose")
        if not conv and (attr(n, "transA", 0) or len(inits[n.input[1]].dims) != 2):
            continue
        if len(view.consumers.get(n.input[1], ())) != 1:
            continue
        bias = n.input[2] if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2] in inits else None
        if bias is not None and len(view.consumers.get(bias, ())) != 1:
            continue
        layers.append(WeightLayer(
            n, n.input[1], bias, int(attr(n, "group", 1)) if conv else 1,
            trans_b=bool(attr(n, "transB", 0)) if n.op_type == "Gemm" else conv,
        ))
    return layers


def transposed_conv_rows(w: np.ndarray, groups: int) -> np.ndarray:
    """A ``ConvTranspose`` weight ``(Cin, Cout/g, *k)`` as the weight ``(Cout, Cin/g, *k)`` of the
    stride-1 convolution it equals on the zero-interleaved input: per group, the channel axes
    swapped and the kernel flipped."""
    cin, cout_g, k = w.shape[0], w.shape[1], w.shape[2:]
    wg = np.swapaxes(w.reshape(groups, cin // groups, cout_g, *k), 1, 2)
    wg = np.flip(wg, axis=tuple(range(3, 3 + len(k))))
    return np.ascontiguousarray(wg.reshape(groups * cout_g, cin // groups, *k))


def transposed_conv_stored(rows: np.ndarray, groups: int) -> np.ndarray:
    """The inverse of :func:`transposed_conv_rows`: ``(Cout, Cin/g, *k)`` back to ``(Cin, Cout/g, *k)``."""
    cout, cin_g, k = rows.shape[0], rows.shape[1], rows.shape[2:]
    wg = np.flip(rows.reshape(groups, cout // groups, cin_g, *k), axis=tuple(range(3, 3 + len(k))))
    return np.ascontiguousarray(np.swapaxes(wg, 1, 2).reshape(groups * cin_g, cout // groups, *k))


def to_rows(w: np.ndarray, trans_b: bool, transposed: bool, groups: int) -> np.ndarray:
    """A stored weight in the ``(Cout, Cin/groups, *kernel)`` layout."""
    if transposed:
        return transposed_conv_rows(w, groups)
    return w if trans_b else w.T.copy()


def to_stored(w: np.ndarray, trans_b: bool, transposed: bool, groups: int) -> np.ndarray:
    """The inverse of :func:`to_rows`."""
    if transposed:
        return transposed_conv_stored(w, groups)
    return w if trans_b else w.T


def layer_weight(model: onnx.ModelProto, layer: WeightLayer) -> np.ndarray:
    """Weight as ``(Cout, Cin/groups, *kernel)`` float32 (Gemm: ``(Cout, Cin)``)."""
    return to_rows(get_array(model, layer.weight).astype(np.float32), layer.trans_b, layer.transposed, layer.groups)


def set_layer_weight(model: onnx.ModelProto, layer: WeightLayer, w: np.ndarray) -> None:
    set_array(model, layer.weight, to_stored(w, layer.trans_b, layer.transposed, layer.groups))


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
