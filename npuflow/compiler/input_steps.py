"""The quantize steps a graph input reaches only through ops that keep its values (its clipping points).

The run-time coverage count (:mod:`npuflow.runtime.coverage`) reads an input's own quantize step
(``inputs[i]["quant"]``).  An input that first passes float CPU ops has none: DLinear on
bernoulli2 replicates its series' ends with ``Slice``/``Expand``/``Tile`` and a ``Concat`` before
anything is quantized, so held-out values past the calibrated range were clipped with no
warning (round 27).  Where those ops only move values (``operators.VALUE_KEEPING_OPS``), the
input's values reach the later quantize step unchanged and are clipped there exactly as at a
step of its own: ``compile`` records such steps as the input's ``clipped_by`` (format 1.3 / 2.1)
and the count covers them.  An op that computes (``Sub``, ``AveragePool``) ends the walk: its
output's range is not the input's.
"""

from __future__ import annotations

from ..operators import ALL_DATA_INPUT_OPS, STANDARD_DOMAINS, VALUE_KEEPING_OPS
from .qgraph import QGraph

#: how many ops a walk from one input follows at most (a guard: real models reach their first
#: quantize step within a handful)
MAX_NODES = 256


def clipping_steps(g: QGraph, name: str) -> list[dict]:
    """``[{"node": quantize node, "quant": its per-tensor params}]`` for each quantize step that
    graph input ``name`` reaches through value-keeping ops only, the input's own steps left out
    (``quant`` records them); per-channel steps are skipped (the count takes one range)."""
    found: list[dict] = []
    seen: set[str] = set()
    todo = [(name, True)]
    while todo and len(seen) < MAX_NODES:
        tensor, direct = todo.pop()
        for node in g.consumer_nodes(tensor):
            if node.name in seen:
                continue
            if g.quantize_mode(node) is not None:
                if not direct and node.input[0] == tensor:
                    seen.add(node.name)
                    p = g.quantize_params(node)
                    if p is not None and p.axis is None:
                        found.append({"node": node.name, "quant": p.to_json()})
                continue
            data = node.input if node.op_type in ALL_DATA_INPUT_OPS else node.input[:1]
            if node.op_type in VALUE_KEEPING_OPS and node.domain in STANDARD_DOMAINS and tensor in data:
                seen.add(node.name)
                todo.extend((o, False) for o in node.output if o)
    return found
