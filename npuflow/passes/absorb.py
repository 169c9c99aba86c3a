"""A layer taking over the node after it: the last step of folding BatchNormalization
(:mod:`.fold_batchnorm`) and per-channel Mul/Add (:mod:`.fold_affine`) into a Conv/Gemm."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import GraphView, set_array, unique_name


def absorb_follower(graph: onnx.GraphProto, idx: GraphView, layer: onnx.NodeProto, follower: onnx.NodeProto,
                    w: np.ndarray, b: np.ndarray, suffix: str) -> None:
    """``layer`` (Conv/ConvTranspose/Gemm) takes new weight ``w`` and bias ``b`` and replaces
    ``follower`` (a BatchNormalization or affine op folded into it), output name included.

    Weight and bias are rewritten in place when ``layer`` is their only reader, else under new
    names (``<weight><suffix>``, ``<layer>_bias``).
    """
    set_layer_params(graph, idx, layer, w, b, suffix)
    out, stale = follower.output[0], layer.output[0]
    # remove the follower before the layer takes over its output name (matched by outputs)
    graph.node.remove(next(n for n in graph.node if list(n.output) == list(follower.output)))
    layer.output[0] = out
    keep = [vi for vi in graph.value_info if vi.name != stale]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def set_layer_params(graph: onnx.GraphProto, idx: GraphView, layer: onnx.NodeProto, w: np.ndarray, b: np.ndarray,
                     suffix: str) -> None:
    """``layer`` (Conv/ConvTranspose/Gemm) computes with weight ``w`` and bias ``b`` (float32):
    rewritten in place when ``layer`` is their only reader, else under new names
    (``<weight><suffix>``, ``<layer>_bias``), so a weight shared with another layer is left as it is."""
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    w_name = layer.input[1] if len(idx.consumers[layer.input[1]]) == 1 else unique_name(graph, layer.input[1] + suffix)
    b_name = (layer.input[2] if has_bias and len(idx.consumers[layer.input[2]]) == 1
              else unique_name(graph, (layer.name or layer.output[0]) + "_bias"))
    set_array(graph, w_name, w.astype(np.float32), add=True)
    set_array(graph, b_name, b.astype(np.float32), add=True)
    layer.input[1] = w_name
    if has_bias:
        layer.input[2] = b_name
    else:
        layer.input.append(b_name)
