"""Remove ``Identity`` and inference-mode ``Dropout`` nodes: they compute nothing.

Consumers are re-pointed at the node's input.  When the node's output is a graph output, the
producer of its input takes over the output name instead (when it can: the input must be a node
output with no other consumer), so model output names never change.
"""

from __future__ import annotations

import onnx

from ..operators import op_def
from ..graph import GraphView


def remove_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model without Identity/Dropout nodes (where removable)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    changed = True
    while changed:
        changed = False
        idx = GraphView(graph)
        for node in graph.node:
            if op_def(node.op_type, node.domain).kind != "identity" or not node.input or not node.input[0]:
                continue
            if node.op_type == "Dropout" and (len(node.output) > 1 and node.output[1] and idx.consumers.get(node.output[1])):
                continue
            src, dst = node.input[0], node.output[0]
            if idx.is_graph_output(dst):
                prod = idx.producer_node(src)
                if prod is None or len(idx.consumers[src]) != 1 or idx.is_graph_output(src):
                    continue
                prod.output[list(prod.output).index(src)] = dst
            else:
                for user in idx.consumer_nodes(dst):
                    for k, name in enumerate(user.input):
                        if name == dst:
                            user.input[k] = src
            graph.node.remove(node)
            changed = True
            break
    return out
