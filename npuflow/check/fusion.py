"""Which nodes run as part of the operation before them (one accelerator instruction).

Order matters, as on the hardware: a ``MatMul`` by a constant matrix takes the bias ``Add`` after
it (:func:`npuflow.passes.linear_bias.linear_bias`: one fully connected layer with its int32
bias, in a float model and in a quantized one), a convolution (or FC) absorbs a bias ``Add`` and a
``BatchNormalization`` right after it (folded into its weights), then one activation the target
lists in the op's ``activations`` (``Conv -> BN -> ReLU`` is one op).  An activation blocks what
follows, so in ``Conv -> ReLU -> BN`` the BN stays a separate op.  The hard-swish written as
``x * HardSigmoid(x)`` and a GELU in any exported form (:func:`npuflow.passes.gelu.gelu`) are
recognised as one activation first.  A tensor that is a graph output
is never fused away (the intermediate value must exist).
"""

from __future__ import annotations

from onnx import NodeProto

from ..activation_patterns import hard_activation
from ..operators import FOLDS_INTO, WEIGHTED_KINDS, fuses, op_def
from ..targets.spec import Target
from ..graph import GraphView
from ..node_kinds import ACTIVATION, DYNAMIC_WEIGHT, OpInfo
from ..targets.judge import rule_reasons
from ..passes.activations import op_kind
from ..passes.gelu import gelu, is_canonical
from ..passes.linear_bias import linear_bias

#: How many constant scale/shift/BatchNorm nodes in a row a weighted op absorbs.
MAX_ABSORBED = 4


def _single_consumer(view: GraphView, tensor: str) -> int | None:
    cons = view.data_consumers(tensor)
    return cons[0] if len(cons) == 1 and not view.reaches_output(tensor) else None


class _Patterns:
    """The checker's graph view as the registry's :class:`~npuflow.activation_patterns.PatternView`: through
    Q/DQ steps, so a quantized model's decomposed activations are found as a float model's."""

    def __init__(self, view: GraphView) -> None:
        self.view = view

    def source(self, tensor: str) -> str:
        return self.view.data_source(tensor)

    def producer(self, tensor: str) -> NodeProto | None:
        p = self.view.producer.get(tensor)
        return self.view.nodes[p] if p is not None else None

    def only_reader(self, tensor: str) -> NodeProto | None:
        c = _single_consumer(self.view, tensor)
        return self.view.nodes[c] if c is not None else None

    def scalar(self, tensor: str) -> float | None:
        if not tensor or not self.view.is_const(tensor):
            return None
        v = self.view.value(tensor)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def find_activation_patterns(view: GraphView, infos: list[OpInfo]) -> dict[int, int]:
    """Activations exporters write as several nodes (:func:`npuflow.activation_patterns.hard_activation`:
    ``x * HardSigmoid(x)``, ``x * Clip(x + 3, 0, 6) / 6``, ``Clip(x + 3, 0, 6) / 6``; a GELU,
    :func:`npuflow.passes.gelu.gelu`); the last node becomes the activation.  Returns {member: last node}."""
    g = pattern_view(view)
    quantized = any(view.qdq)  # there only the chain the compiler walks as one table is one GELU
    fused: dict[int, int] = {}
    for i, node in enumerate(view.nodes):
        if view.qdq[i]:
            continue
        if (found := hard_activation(node, g)) is not None:
            infos[i] = OpInfo(found.kind, ACTIVATION, {"alpha": found.alpha, "beta": found.beta})
            members = found.nodes[:-1]
        elif (gelu_found := gelu(node, g)) is not None and (not quantized or is_canonical(gelu_found)):
            infos[i] = OpInfo("gelu", ACTIVATION, {})
            members = gelu_found.nodes[:-1]
        else:
            continue
        for member in members:
            fused[view.position(member)] = i
    return fused


def pattern_view(view: GraphView) -> _Patterns:
    """``view`` as the registry's :class:`~npuflow.activation_patterns.PatternView`, through Q/DQ steps (the
    compiler asks it too, so it names a GELU's table as the checker places it)."""
    return _Patterns(view)


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
        # A layer whose weights are computed at run time has no rule and runs on the CPU, yet the
        # quantizer fuses its activation as the layer's (``passes/activations.op_kind`` does not ask
        # where the weights come from): no quantize step between, so the activation runs with it
        # (onnx's light SqueezeNet: the ReLU after a ``ConstantOfShape``-weight conv was alone on
        # cpu-int8's accelerator in check of the float model, on the CPU with its conv in compile).
        kind = info.kind.removesuffix(DYNAMIC_WEIGHT)
        # the kind the quantizer fuses activations by; an op the target has no rule for runs on the CPU, and a
        # CPU target's quantizer quantizes it there (:mod:`npuflow.quant.placement`) and fuses its activation
        # by its registry kind (``passes/activations.op_kind``: a 3-D Conv counts as a conv2d), so the
        # activation runs with it (round 28a's StereoNet: ``Conv3d -> Relu -> Conv3d`` on cpu-int8 had each
        # ReLU alone on the accelerator in check, 4 subgraphs, on the CPU with its Conv3d in compile, 2)
        fusing = kind if target.rule(kind) is not None else \
            op_kind(node, view) if target.kind == "cpu" and op_def(node.op_type, node.domain).quantized else None
        if fusing is None:
            continue
        out = node.output[0]
        chain: list[int] = []
        bias = linear_bias(node, view) if info.kind == "fc" else None
        if bias is not None and view.position(bias.add) not in fused:
            chain.append(view.position(bias.add))
            out = bias.output
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
            if act.role == ACTIVATION and fuses(target, fusing, act.kind) and _activation_ok(target, act) \
                    and c not in fused:
                members = [m for m, anchor in fused.items() if anchor == c]
                chain.append(c)
                chain.extend(members)
        for m in chain:
            fused[m] = i
    return fused
