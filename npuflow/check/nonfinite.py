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

from ..graph import GraphView
from ..operators import RANGE_CARRYING_OPS, VALUE_MOVING_OPS, op_def

#: Magnitudes from here up (float32's top binade, 1.7e38 to 3.4e38) are sentinels, not data: the
#: ``torch.finfo(torch.float32).min`` that ``torch.onnx.export(dynamo=True)`` and Hugging Face
#: models write for a masked attention score, where the default exporter writes ``-inf``.
SENTINEL = 2.0 ** 127


def finite_values(v: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float, float, int]:
    """``(finite values, their min, their max, how many were not)`` of ``v`` whose extremes are
    ``lo``/``hi``: infinities, NaN and :data:`SENTINEL` magnitudes (an attention mask's ``-inf`` or
    ``finfo.min`` in ``Where(mask, 0, -inf)``) are counted apart, so no range becomes infinite or
    spans 1e38; the quantizer keeps such tensors float (``quant/pipeline.py``).  Extremes both
    below the sentinel mean every value is (NaN propagates into them)."""
    if abs(lo) < SENTINEL and abs(hi) < SENTINEL:
        return v, lo, hi, 0
    finite = v[np.abs(v) < SENTINEL]
    if finite.size == 0:
        return finite, math.inf, -math.inf, int(v.size)
    return finite, float(finite.min()), float(finite.max()), int(v.size - finite.size)


def sentinel_tensors(view: GraphView) -> dict[str, str]:
    """``{tensor: the constant it carries}`` for the float constants read as data (a ``Clip``'s
    ``-inf`` bound is none) holding a value
    :func:`finite_values` counts apart and the outputs of the ops that pass them on (``Where(mask,
    0, -inf)``, the ``Add`` of it to the scores, reshapes: ``operators.RANGE_CARRYING_OPS`` and
    ``VALUE_MOVING_OPS``); a ``Softmax`` ends it (it turns ``-inf`` into 0)."""
    found: dict[str, str] = {}
    for node in view.nodes:
        for name in [node.input[k] for k in op_def(node.op_type, node.domain).data_inputs(node)]:  # not Clip bounds
            v = view.const(name) if name and name not in found else None
            if v is not None and v.dtype.kind == "f" and v.size and \
                    finite_values(v, float(np.min(v)), float(np.max(v)))[3]:
                found[name] = name
        src = next((found[i] for i in node.input if i in found), None)
        if src is not None and node.domain in ("", "ai.onnx") and \
                (node.op_type == "Where" or node.op_type in RANGE_CARRYING_OPS | VALUE_MOVING_OPS):
            found.update(dict.fromkeys([o for o in node.output if o], src))
    return found
