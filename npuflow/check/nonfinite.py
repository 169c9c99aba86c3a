"""Values no 8-bit grid represents: infinities, NaN and sentinel magnitudes (an attention mask's
``-inf`` or ``finfo.min``), one test for the quantizer's observers and for check.

The quantizer counts such values apart while it calibrates (:func:`finite_values`, read by
``quant/observers.py``) and keeps the nodes that write or read a tensor holding them float
(``quant/pipeline.py``); check of a float model sees no data, so it applies the same test to the
constants (:func:`sentinel_tensors`): a mask constant and what carries it to the scores stay on the
CPU, as quantize leaves them and compile runs them.
"""

from __future__ import annotations

import math

import numpy as np

from onnx import numpy_helper

from ..graph import GraphView, attr
from ..operators import FILL_INPUT, NEG_INF_DROPPING_OPS, RANGE_CARRYING_OPS, VALUE_MOVING_OPS, op_def

#: Magnitudes from here up (float32's top binade, 1.7e38 to 3.4e38) are sentinels, not data: the
#: ``torch.finfo(torch.float32).min`` that ``torch.onnx.export(dynamo=True)`` and Hugging Face
#: models write for a masked attention score, where the default exporter writes ``-inf``.
SENTINEL = 2.0 ** 127
#: A constant this negative that reaches attention scores is a mask, not data: float32's ``exp``
#: of a score pushed below about -104 is 0, as of ``-inf``, while one linear 8-bit grid over the
#: mask and the scores rounds every score to 0 (a masked attention block quantized that way: output
#: cosine 0.88).  Hugging Face's BERT writes ``(1 - mask) * -10000``, others ``-1e9`` or ``-65504``.
MASK_FLOOR = -1.0e4


def finite_values(v: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float, float, int]:
    """``(finite values, their min, their max, how many were not)`` of ``v`` whose extremes are
    ``lo``/``hi``: infinities, NaN and :data:`SENTINEL` magnitudes (an attention mask's ``-inf`` or
    ``finfo.min`` in ``Where(mask, 0, -inf)``) are counted apart, so no range becomes infinite or
    spans 1e38; the quantizer keeps such tensors float (``quant/pipeline.py``).  Extremes both
    below the sentinel mean every value is (NaN propagates into them)."""
    if abs(lo) < SENTINEL and abs(hi) < SENTINEL:
        return v, lo, hi, 0
    finite = v[_below_sentinel(v)]
    if finite.size == 0:
        return finite, math.inf, -math.inf, int(v.size)
    return finite, float(finite.min()), float(finite.max()), int(v.size - finite.size)


def _below_sentinel(v: np.ndarray) -> np.ndarray:
    """Mask of the values of ``v`` below :data:`SENTINEL` in magnitude (NaN not).  In float16 the
    sentinel casts to inf, which still leaves infinities out; numpy's overflow warning for that cast
    is silenced (a user checking a float16 model saw it)."""
    with np.errstate(over="ignore"):
        return np.abs(v) < SENTINEL


def _mask_constant(v: np.ndarray) -> bool:
    """A float constant holding a value :func:`finite_values` counts apart, or one at or below
    :data:`MASK_FLOOR` (a finite attention mask, which counts only where it reaches a Softmax)."""
    return _beyond_grid(v) or float(np.min(v)) <= MASK_FLOOR


def sentinel_tensors(view: GraphView) -> dict[str, str]:
    """``{tensor: the constant it carries}`` for the float constants read as data (a ``Clip``'s
    ``-inf`` bound is none) holding a value :func:`finite_values` counts apart, and the outputs of
    the ops that pass them on (``Where(mask, 0, -inf)``, the ``Add`` of it to the scores, reshapes:
    ``operators.RANGE_CARRYING_OPS`` and ``VALUE_MOVING_OPS``); a ``Softmax`` ends it (it turns
    ``-inf`` into 0).  A finite constant at or below :data:`MASK_FLOOR` (Hugging Face's
    ``(1 - mask) * -10000``, ``-1e9``) counts the same way where what carries it reaches a ``Softmax``,
    and so does the fill of a ``ConstantOfShape`` (``masked_fill`` under a dynamic sequence length),
    whose values calibration never sees when its masks are all ones."""
    carried: dict[str, str] = {}
    values: dict[str, np.ndarray] = {}
    for node in view.nodes:
        if node.op_type == "ConstantOfShape" and node.output[0]:  # masked_fill's fill under a dynamic shape
            fill = attr(node, "value")
            if fill is not None:
                values[node.output[0]] = numpy_helper.to_array(fill)
        fill = FILL_INPUT.get(node.op_type, len(node.input))
        if fill < len(node.input) and node.input[fill] and node.output[0]:
            # a Pad's -inf fill: the quantizer keeps the Pad and what reads its infinities float (CornerNet's
            # corner pooling on cpu-int8: check placed 8 Pads and 8 Slices on the accelerator, compile did not)
            v = view.const(node.input[fill])
            if v is not None and v.dtype.kind == "f" and v.size and _mask_constant(v):
                carried[node.output[0]] = node.input[fill]
                values[node.input[fill]] = v
        for name in [node.input[k] for k in op_def(node.op_type, node.domain).data_inputs(node)]:  # not Clip bounds
            v = (values.get(name) if name in values else view.const(name)) if name and name not in carried else None
            if v is not None and v.dtype.kind == "f" and v.size and _mask_constant(v):
                carried[name] = name
                values[name] = v
        src = next((carried[i] for i in node.input if i in carried), None)
        if src is not None and node.op_type in NEG_INF_DROPPING_OPS and _only_neg_inf(values[src]) and \
                (NEG_INF_DROPPING_OPS[node.op_type] or any(i and i not in carried for i in node.input)):
            src = None  # max(x, -inf) = x: the fill ends here
        if src is not None and node.domain in ("", "ai.onnx") and \
                (node.op_type == "Where" or node.op_type in RANGE_CARRYING_OPS | VALUE_MOVING_OPS):
            carried.update(dict.fromkeys([o for o in node.output if o], src))
    softmaxed = {carried[t] for t in carried for n in view.consumer_nodes(t) if n.op_type == "Softmax"}
    return {t: c for t, c in carried.items() if c in softmaxed or _beyond_grid(values[c])}


def _only_neg_inf(v: np.ndarray) -> bool:
    """Whether the values :func:`finite_values` counts apart in constant ``v`` are all ``-inf``."""
    apart = v[~_below_sentinel(v)]
    return bool(apart.size) and bool(np.all(apart == -np.inf))


def _beyond_grid(v: np.ndarray) -> bool:
    """Whether constant ``v`` holds infinities, NaN or sentinel magnitudes (no grid at all, Softmax or not)."""
    return bool(finite_values(v, float(np.min(v)), float(np.max(v)))[3])
