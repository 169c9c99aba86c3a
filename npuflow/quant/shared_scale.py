"""``NPF_QUANT_SHARED_SCALE_RANGE``: an op that gives its inputs one scale joins inputs of very different ranges.

A Concat (and an Add of two activations on a power-of-two target) quantizes every input on one grid
(``operators.SharedScale``, the plan's scale groups): the narrow input keeps only the codes its range
spans on the wide input's grid.  Round 27's FFT forecaster concatenated a series of +-5.8 with FFT
amplitudes up to ~250: on DPUCZDX8G the shared step is 2 and the series keeps 7 codes; held-out cosine
0.863 while the accuracy check read 0.9906, with no warning.  The check reads the calibrated min/max
of each input, so it warns before any sample is judged.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from ..errors import NpuflowError
from ..operators import SharedScale, op_def
from .plan import QuantPlan, node_key

#: the narrow input's share of the joined range below which the check warns: 1/16 of 256 codes is
#: 16 codes (4 bits) left for it
MIN_RANGE_SHARE = 1 / 16


def shared_scale_warnings(graph: onnx.GraphProto, plan: QuantPlan, minmax: Mapping) -> list[NpuflowError]:
    """One warning per quantized op whose inputs share one scale group and whose narrowest input
    spans less than :data:`MIN_RANGE_SHARE` of their joined calibrated range."""
    found = []
    for node in graph.node:
        d = op_def(node.op_type, node.domain)
        if node_key(node) not in plan.quantized or d.scale not in (SharedScale.ALL, SharedScale.INPUTS_ON_POW2):
            continue
        ins = [node.input[k] for k in d.quantized_inputs(node) if node.input[k] in plan.points]
        ranges = {t: (minmax[t].min, minmax[t].max) for t in dict.fromkeys(ins)
                  if t in minmax and minmax[t].count and minmax[t].max >= minmax[t].min}
        if len(ranges) < 2 or len({plan.find(t) for t in ranges}) != 1:
            continue  # one input, or inputs that keep their own scales (an Add on a float-scale target)
        low, high = min(lo for lo, _ in ranges.values()), max(hi for _, hi in ranges.values())
        narrow = min(ranges, key=lambda t: ranges[t][1] - ranges[t][0])
        settings = plan.points[narrow].settings
        if settings.symmetric:  # the grid spans -amax..amax: a one-signed wide input leaves half of it unused
            low, high = -max(-low, high), max(-low, high)
        width = ranges[narrow][1] - ranges[narrow][0]
        if high <= low or width <= 0 or width / (high - low) >= MIN_RANGE_SHARE:
            continue
        bits = settings.bit_width
        codes = int(width / (high - low) * ((1 << bits) - 1)) + 1  # the steps of the joined grid it spans
        text = "; ".join(f"{t!r} {lo:.4g}..{hi:.4g}" for t, (lo, hi) in ranges.items())
        found.append(NpuflowError("NPF_QUANT_SHARED_SCALE_RANGE", node=node.name or node.output[0], op=node.op_type,
                                  ranges=text, narrow=narrow, codes=codes, levels=1 << bits,
                                  ratio=f"{(high - low) / width:.0f}"))
    return found
