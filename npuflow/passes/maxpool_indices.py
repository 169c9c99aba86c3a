"""A ``MaxPool`` with an indices output as two pools: the values, and the indices alone.

ENet's encoder keeps ``max_pool2d(..., return_indices=True)``'s indices for the decoder's
``max_unpool2d``; ONNX writes one ``MaxPool`` with two outputs, and the int64 indices put the whole
node on the CPU (round 23a: "MaxPool computes on int64 tensor"), so the pooled values, which the
next convolution reads, left the accelerator too and split its subgraph at every such pool.

The values are a plain ``MaxPool`` of the same input (exact on integer codes, as every max pool);
the indices are a second ``MaxPool`` of the same input named ``NAME/indices`` whose values output no
one reads.  The first keeps the node's name and the values output and runs where any max pool runs;
the second stays on the CPU (it computes int64), reading the same tensor as the original did, so
the indices are the ones the original node computes on the quantized model's input.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..graph import unique_name


def maxpool_indices_apart(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each two-output ``MaxPool`` whose values are read split in two (module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    nodes = []
    for node in graph.node:
        if node.op_type != "MaxPool" or node.domain or len(node.output) < 2 or not node.output[1] or \
                node.output[0] not in read:
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        values = helper.make_node("MaxPool", [node.input[0]], [node.output[0]], name=name)
        values.attribute.extend(a for a in node.attribute if a.name != "storage_order")
        unread = unique_name(graph, f"{name}/indices_values")
        indices = helper.make_node("MaxPool", [node.input[0]], [unread, node.output[1]], name=f"{name}/indices")
        indices.attribute.extend(node.attribute)
        nodes += [values, indices]
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)
    return out
