"""Placement that the calibration data decide, noted on the nodes it may move.

``check`` judges the graph alone; ``quantize`` then keeps in float (on the CPU) the producer chain
of a computed divisor whose calibrated values an 8-bit grid would round to 0, with the ops between
that chain and the dividend (:mod:`npuflow.quant.divisors`, which takes :func:`dividend_cone` from
here).  DCCRN-lite divides by a magnitude (calibrated 0.000107 .. 25.3): on bernoulli2 ``check``
said 16 CPU nodes, ``compile`` 19, and nothing in ``check`` said it might be so (new-user round
28b).  The rule needs the data, so check cannot decide it; it says so on the accelerator nodes it
may move: the divisor's producers through one-input ops (how far quantize goes depends on the
ranges too) and the ops between them and the dividend.
"""

from __future__ import annotations

import onnx

from ..graph import GraphView
from ..operators import DIVISOR_INPUT, STANDARD_DOMAINS
from .report import NPU, CheckReport


def dividend_cone(view: GraphView, chain: list[onnx.NodeProto], div: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The nodes between the float divisor ``chain`` and ``div``'s dividend: a ratio of two sums of one
    exponential (RWKV's WKV ``sum(w exp(k) v) / sum(w exp(k))``, a written-out softmax) divides a dividend
    that spans the divisor's range too, and quantized on one grid it loses the small terms the float
    divisor keeps (cosine 0.34 on ``tests/unit/test_divisor_dividend.py``'s net with only the divisor float)."""
    reached: list[onnx.NodeProto] = []
    tensors = [o for n in chain for o in n.output]
    while tensors:
        for node in view.consumer_nodes(tensors.pop()):
            if node is not div and node not in chain and node not in reached:
                reached.append(node)
                tensors.extend(node.output)
    feeding: set[tuple[str, ...]] = set()
    tensors = [i for k, i in enumerate(div.input) if i and k != DIVISOR_INPUT[div.op_type]]
    while tensors:
        node = view.producer_node(tensors.pop())
        if node is not None and tuple(node.output) not in feeding:
            feeding.add(tuple(node.output))
            tensors.extend(i for i in node.input if i and not view.is_const(i))
    return [n for n in reached if tuple(n.output) in feeding]


def note_data_dependent_divisors(report: CheckReport, view: GraphView) -> None:
    """Add a message to each accelerator node quantize may keep in float for a computed divisor."""
    by_output = {o: n for n in report.nodes for o in n.outputs if o}
    for div in view.nodes:
        at = DIVISOR_INPUT.get(div.op_type) if div.domain in STANDARD_DOMAINS else None
        if at is None or at >= len(div.input) or view.is_const(div.input[at]):
            continue
        chain: list[onnx.NodeProto] = []
        tensor = div.input[at]
        while (node := view.producer_node(tensor)) is not None and node not in chain:
            chain.append(node)
            data = [i for i in node.input if i and not view.is_const(i)]
            if len(data) != 1:
                break
            tensor = data[0]
        for node in chain + dividend_cone(view, chain, div):
            placed = by_output.get(node.output[0])
            if placed is not None and placed.device == NPU:
                placed.messages.append(
                    f"depends on the data: on the divisor path of {div.name or div.output[0]}; where calibration "
                    "brings the divisor near 0 (below half its 8-bit step), quantize keeps it in float on the CPU "
                    "(quantize's node table says where each node runs)")
