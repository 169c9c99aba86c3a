"""Where the quantizer quantizes data movement: one rule for ``check`` and ``quant`` (issues 16/17).

Data-movement ops compute nothing; the quantizer quantizes them only where integers flow anyway,
so ``check`` must place them by the same rule or ``compile`` finds accelerator nodes left in float
(which it runs on the CPU).  Two parts, both applied by ``quant/plan.py`` when it builds the plan
and by :mod:`.place` on float models:

* a follower (:data:`npuflow.operators.FOLLOWERS`) is quantized only when the op feeding its data input is (as ONNX
  Runtime's quantizer does): a Reshape after a float Softmax stays float instead of quantizing
  probabilities, one fed from the CPU or a graph input stays on the CPU;
* on float-scale targets (:func:`float_tail_applies`) data movement whose outputs no quantized op
  reads stays float (:func:`drop_float_tail`): quantizing the output head only loses precision;
  so does an op with a fixed output range (a Sigmoid) read only by that tail.

``quant`` imports this module, never the reverse.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, TypeVar

from ..operators import DATA_MOVEMENT, FIXED_OUTPUT_RANGE, FOLLOWERS, QUANTIZED_OPS, TABLE_OPS
from ..targets import Target

K = TypeVar("K", bound=Hashable)


def follows_quantized(op_type: str, producer_quantized: bool) -> bool:
    """Whether an op may be quantized given whether its data input's producer is (a control-flow
    node or a graph input is not: both are float)."""
    return op_type not in FOLLOWERS or producer_quantized


def float_tail_applies(target: Target) -> bool:
    """The float tail is for float-scale targets (CPU-like numerics); on power-of-two targets
    the output leaves the accelerator as integers anyway."""
    return target.numerics.scale_type == "float"


def _table_between(key: K, quantized: set[K], op_type: Callable[[K], str],
                   readers_of: Callable[[K], Iterable[K]]) -> bool:
    """Whether ``key`` is a table op (:data:`npuflow.operators.TABLE_OPS`) the quantizer does not
    quantize on its own, every reader of which is quantized (it then sits between two quantize steps)."""
    kind = op_type(key)
    if kind not in TABLE_OPS or kind in QUANTIZED_OPS:
        return False
    readers = list(readers_of(key))
    return bool(readers) and all(r in quantized for r in readers)


def _in_tail(key: K, quantized: set[K], op_type: Callable[[K], str], readers_of: Callable[[K], Iterable[K]]) -> bool:
    """Whether node ``key`` belongs to the float tail: no quantized node reads it, and it is data
    movement, or an op whose output grid is a fixed interval (:data:`npuflow.operators.FIXED_OUTPUT_RANGE`:
    a Sigmoid) read only by data movement.  Quantized for no integer reader, that fixed grid is only
    lost precision: YOLOv8n's class-score Sigmoid before the head's Concat rounded small scores to 0
    on its 1/255 grid.  A Sigmoid read by a quantized op keeps [0, 1] (a wake-word detection
    calibrated without positives is not clipped); one that is itself the model output, or read by a
    float compute op, keeps its grid too, so the accuracy check can pass a silent probability within
    one step of FP32 (float, computed from the quantized logit, it is neither on a grid nor close in
    cosine).  Tanh's range is calibrated (it has no fixed-interval entry) and Softmax is no quantized
    op; HardSigmoid's range is calibrated and it fuses into its producer, as ReLU does.  A table op
    the quantizer never quantizes alone (a ``Neg``, an ``Abs``; before session 33 a Tanh) that is
    the node's one reader, and whose readers are all quantized, reads integers too: the compiler
    lowers it as a table between this node's quantize step and theirs (a ConvLSTM's ``chunk`` of the gate conv into ``Tanh(g)``: the
    Slice went float for want of a quantized reader, the Tanh for want of a quantized input, and
    both ran in float on the CPU at every step)."""
    readers = list(readers_of(key))
    if any(r in quantized for r in readers) or (
            len(readers) == 1 and _table_between(readers[0], quantized, op_type, readers_of)):
        return False
    kind = op_type(key)
    return kind in DATA_MOVEMENT or (kind in FIXED_OUTPUT_RANGE and bool(readers)
                                     and all(op_type(r) in DATA_MOVEMENT for r in readers))


def drop_float_tail(quantized: set[K], op_type: Callable[[K], str], readers: Callable[[K], Iterable[K]]) -> list[K]:
    """Remove from ``quantized`` the float tail (:func:`_in_tail`: data movement, :data:`npuflow.operators.DATA_MOVEMENT`;
    not ``Relu``, a follower: fused into its producer it is where that output gets quantized, and a
    float one would move the quantize step onto the raw, wider producer output) no quantized node reads, until
    nothing changes (a Reshape feeding a float Concat goes float too); returns them.

    Typically the output head: no integer computation follows, and a Concat of differently
    ranged tensors (YOLOv8's boxes in pixels beside class scores in [0, 1]) would force one scale
    on both and wipe out the small ones.  NNCF likewise quantizes only the inputs of compute ops.
    The result does not depend on the order nodes are visited (removal only ever removes more).
    """
    dropped: list[K] = []
    changed = True
    while changed:
        changed = False
        for key in list(quantized):
            if _in_tail(key, quantized, op_type, readers):
                quantized.discard(key)
                dropped.append(key)
                changed = True
    return dropped
