"""Which nodes run as part of the operation before them (one accelerator instruction).

Order matters, as on the hardware: a convolution (or FC) absorbs a bias ``Add`` and a
``BatchNormalization`` right after it (folded into its weights), then one activation the target
lists in the op's ``activations`` (``Conv -> BN -> ReLU`` is one op).  An activation blocks what
follows, so in ``Conv -> ReLU -> BN`` the BN stays a separate op.  The hard-swish written as
``x * HardSigmoid(x)`` is recognised as one activation first.  A tensor that is a graph output
is never fused away (the intermediate value must exist).
"""

from __future__ import annotations

from onnx import NodeProto

from ..operators import FOLDS_INTO, HSIGMOID_ALPHA, HSIGMOID_BETA, HSIGMOID_OFFSET, WEIGHTED_KINDS, close, \
    divides_by_six, fuses
from ..targets.spec import Target
from .graph import GraphView
from .ops import ACTIVATION, OpInfo
from .rules import rule_reasons

#: How many constant scale/shift/BatchNorm nodes in a row a weighted op absorbs.
MAX_ABSORBED = 4


def _root(view: GraphView, tensor: str) -> str:
    """The tensor before any Q/DQ chain."""
    for _ in range(16):
        p = view.producer.get(tensor)
        if p is None or not view.qdq[p]:
            return tensor
        tensor = view.nodes[p].input[0]
    return tensor


def _scalar(view: GraphView, node, skip: str) -> float | None:
    """The scalar constant operand of a binary node (the other operand being ``skip``)."""
    others = [t for t in node.input if t and _root(view, t) != skip]
    if len(others) != 1 or not view.is_const(others[0]):
        return None
    v = view.value(others[0])
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _single_consumer(view: GraphView, tensor: str) -> int | None:
    cons = view.data_consumers(tensor)
    return cons[0] if len(cons) == 1 and not view.reaches_output(tensor) else None


def _relu6_of_x_plus_3(view: GraphView, infos: list[OpInfo], clip: int) -> tuple[str, int] | None:
    """``Clip(x + 3, 0, 6)`` -> (x, the Add node)."""
    if infos[clip].kind != "relu6":
        return None
    add = view.producer.get(_root(view, view.nodes[clip].input[0]))
    if add is None or view.nodes[add].op_type != "Add":
        return None
    for t in view.nodes[add].input:
        x = _root(view, t)
        if not view.is_const(x) and close(_scalar(view, view.nodes[add], x), HSIGMOID_OFFSET):
            if _single_consumer(view, view.nodes[add].output[0]) == clip:
                return x, add
    return None


def _divided_by_6(view: GraphView, node_index: int, tensor: str) -> int | None:
    """The consumer of ``tensor`` that divides it by 6 (``Div 6`` or ``Mul 1/6``), if it is the only one."""
    c = _single_consumer(view, tensor)
    if c is None:
        return None
    n = view.nodes[c]
    return c if divides_by_six(n.op_type, _scalar(view, n, _root(view, tensor))) else None


def find_activation_patterns(view: GraphView, infos: list[OpInfo]) -> dict[int, int]:
    """Activations exporters write as several nodes; the last node becomes the activation.

    * ``x * HardSigmoid(x)`` -> ``hard_swish``;
    * ``x * Clip(x + 3, 0, 6) / 6`` (PaddlePaddle, Keras) -> ``hard_swish``;
    * ``Clip(x + 3, 0, 6) / 6`` -> ``hard_sigmoid`` (alpha 1/6, beta 0.5).

    Returns {member: last node}.
    """
    fused: dict[int, int] = {}
    sig_input: dict[int, str] = {}  # hard-sigmoid node (or pattern end) -> its input x
    for i, node in enumerate(view.nodes):
        if node.op_type == "HardSigmoid":
            sig_input[i] = _root(view, node.input[0])
        elif infos[i].kind == "relu6" and (found := _relu6_of_x_plus_3(view, infos, i)):
            last = _divided_by_6(view, i, node.output[0])
            if last is not None:
                infos[last] = OpInfo("hard_sigmoid", ACTIVATION, {"alpha": HSIGMOID_ALPHA, "beta": HSIGMOID_BETA})
                fused[found[1]] = last
                fused[i] = last
                sig_input[last] = found[0]
        elif node.op_type == "Mul" and infos[i].kind == "eltwise_mul" and len(node.input) == 2:
            a, b = (_root(view, t) for t in node.input)
            for x, y in ((a, b), (b, a)):
                h = view.producer.get(y)
                if h is None or _single_consumer(view, y) != i:
                    continue
                if sig_input.get(h) == x:  # x * hard_sigmoid(x)
                    infos[i] = OpInfo("hard_swish", ACTIVATION, dict(infos[h].params))
                    for m in [m for m, anchor in fused.items() if anchor == h] + [h]:
                        fused[m] = i
                    break
                found = _relu6_of_x_plus_3(view, infos, h)
                if found and found[0] == x:  # x * relu6(x + 3) [/ 6]
                    last = _divided_by_6(view, i, node.output[0])
                    anchor = last if last is not None else i
                    infos[anchor] = OpInfo("hard_swish", ACTIVATION,
                                           {"alpha": HSIGMOID_ALPHA if last is not None else 1.0, "beta": HSIGMOID_BETA})
                    for m in [found[1], h] + ([i] if last is not None else []):
                        fused[m] = anchor
                    break
    return fused


def _activation_ok(target: Target, info: OpInfo) -> bool:
    """An activation fuses only with the parameters the hardware implements (its own rule)."""
    own = target.ops.get(info.kind)
    if own is None or not own.constraints and not own.params:
        return True
    return not rule_reasons(own, info.params, target.hardware_names())


def _absorbs(node: NodeProto, quantized: bool) -> bool:
    """Whether a weighted op takes the scale/shift/BN after it into its weights.  In a float model
    only where the float passes fold it (``passes/fold_affine.py``, ``fold_batchnorm.py``): after a
    MatMul the quantizer writes a quantize step between, and the compiler judges the Add alone (PP-OCR
    cls's classifier bias on DPUCAHX8L: a 1x1 depthwise convolution the DPU does not have)."""
    return quantized or node.op_type in FOLDS_INTO


def fuse(view: GraphView, infos: list[OpInfo], target: Target, fused: dict[int, int]) -> dict[int, int]:
    """Extends ``fused`` ({member: anchor}) with the BN/bias/activation chains of every op."""
    quantized = any(view.qdq)
    for i, node in enumerate(view.nodes):
        info = infos[i]
        if i in fused or not node.output:
            continue
        rule = target.rule(info.kind)
        if rule is None:
            continue
        out = node.output[0]
        chain: list[int] = []
        if info.kind in WEIGHTED_KINDS and _absorbs(node, quantized):
            for _ in range(MAX_ABSORBED):
                c = _single_consumer(view, out)
                # a quantize step in between (a quantized model) means the compiler sees two ops
                if c is None or not infos[c].affine or c in fused or c not in view.consumers.get(out, []):
                    break
                chain.append(c)
                out = view.nodes[c].output[0]
        cons = view.data_consumers(out)
        heads = {fused.get(c, c) for c in cons}
        if len(heads) == 1 and not view.reaches_output(out):
            c = heads.pop()
            act = infos[c]
            # the quantizer's rule, so no quantize step is written where the checker fuses
            if act.role == ACTIVATION and fuses(target, info.kind, act.kind) and _activation_ok(target, act) \
                    and c not in fused:
                members = [m for m, anchor in fused.items() if anchor == c]
                chain.append(c)
                chain.extend(members)
        for m in chain:
            fused[m] = i
    return fused
