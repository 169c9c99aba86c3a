"""Rewrite one match at a time until none is left: the loop of passes whose matches overlap.

A pass such as :mod:`.prelu` or :mod:`.branch_softmax` rewrites one block, then looks again on the
graph it changed (a match may share nodes with the next).  The shapes they read are inferred once, on
the model as given: each rewrite keeps the shapes of the tensors it leaves in place.
"""

from __future__ import annotations

from typing import Any, Callable

import onnx

from ..graph import GraphView, remove_unused_initializers
from ..value_info import inferred_dims

#: what a node starts (its match, read from the graph view and the inferred dimensions), or ``None``
Match = Callable[[onnx.NodeProto, GraphView, dict], Any]
#: rewrites the graph at that node from its match
Apply = Callable[[onnx.GraphProto, GraphView, onnx.NodeProto, Any], None]


def rewrite_all(model: onnx.ModelProto, trigger: str, match: Match, apply: Apply) -> onnx.ModelProto:
    """A new model with the first node ``match`` finds rewritten by ``apply``, again on the changed graph,
    until none is found; an unchanged copy when no default-domain ``trigger`` node is in the graph (no shape
    inference then)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(n.op_type == trigger and not n.domain for n in out.graph.node):
        return out
    dims = inferred_dims(out)
    while True:
        idx = GraphView(out.graph)
        hit = next(((n, found) for n in out.graph.node if (found := match(n, idx, dims)) is not None), None)
        if hit is None:
            break
        apply(out.graph, idx, *hit)
    remove_unused_initializers(out.graph)
    return out
