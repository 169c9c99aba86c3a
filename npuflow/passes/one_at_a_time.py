"""Rewrite one match at a time until none is left: the loop of passes whose matches overlap.

A pass such as :mod:`.prelu` or :mod:`.branch_softmax` rewrites one block, then looks again on the
graph it changed (a match may share nodes with the next).  The shapes they read are inferred once, on
the model as given: each rewrite keeps the shapes of the tensors it leaves in place.
"""

from __future__ import annotations

from typing import Callable

import onnx

from ..graph import remove_unused_initializers
from ..value_info import inferred_dims

#: rewrites one match in the graph (reading the inferred dimensions) and says whether it found one
RewriteOne = Callable[[onnx.GraphProto, dict], bool]


def rewrite_all(model: onnx.ModelProto, trigger: str, rewrite_one: RewriteOne) -> onnx.ModelProto:
    """A new model with ``rewrite_one`` applied until it finds nothing; an unchanged copy when no
    default-domain ``trigger`` node is in the graph (no shape inference then)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(n.op_type == trigger and not n.domain for n in out.graph.node):
        return out
    dims = inferred_dims(out)
    while rewrite_one(out.graph, dims):
        pass
    remove_unused_initializers(out.graph)
    return out
