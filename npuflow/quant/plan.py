"""Where quantize steps go: the quantization plan of a (legalised) float model.

The plan answers, from the graph and the target alone (no data yet):

* which nodes are quantized (op types the registry marks ``quantized``,
  :data:`npuflow.operators.QUANTIZED_OPS`; float data in and out, not in
  ``keep_float``, not in the input cone of a ``Log`` (:mod:`npuflow.check.cone`: an 8-bit input
  has no relative precision) or of a peak test ``Equal(MaxPool(t), t)`` (equal codes tie; a
  ``layers`` entry naming a member with a ``bit_width`` quantizes it
  anyway), and on accelerator targets placed on the accelerator by the checker:
  :mod:`.placement`; CPU-placed nodes run in float as in the float model);
* which activation tensors get a quantize/dequantize pair, and with which settings (the
  producer's ``activation`` settings; graph inputs: the consumer's ``input`` settings);
* which tensors are *internal*: inside an activation unit, or the output of an op whose only
  reader is an activation the target fuses into it (no quantize step between, docs section 1.4);
* which constants are weights (with per-channel axis), biases (int32, ``s_in * s_w``) or other
  constant operands; the ``Add`` after a ``MatMul`` by a constant matrix that
  :func:`npuflow.passes.linear_bias.linear_bias` finds is that layer's bias (no quantize step
  between them, the vector int32, the ``Add`` part of the ``MatMul``'s layer);
* scale groups (concat inputs/outputs, add inputs on power-of-two targets, pass-through ops);
* the *layers* a precision override addresses (:class:`Layer`): a quantized node with the
  activations the target fuses into it, or a weightless op with its own quantize step.

Precision overrides (``overrides``: layer name -> ``float`` / ``int8`` / ``int16``) are rules of
the plan, not edits of an exported model: ``float`` keeps the layer's nodes in float as
``keep_float`` does, ``int16`` gives its activations and weights 16 bits.  Sensitivity analysis
and the mixed-precision search (:mod:`npuflow.analyze`) rebuild the plan with overrides and
re-run assign + export on the statistics already collected (:mod:`.requantize`), so what they
score is what ``quantize`` builds with the same overrides in its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import onnx

from ..check.cone import float_cones
from ..check.followers import drop_float_tail, float_tail_applies, follows_quantized
from ..model import tensor_elem_types
from ..activation_patterns import is_dpu_hard_sigmoid_scale, unit_kind
from ..operators import CLAMP_OPS, FUSABLE_ACTIVATIONS, SharedScale, activation_kind, fuses, op_def
from ..passes.activations import op_kind
from ..passes.gelu import float_gelus
from ..passes.linear_bias import linear_bias
from ..graph import GraphView, attr
from ..errors import NpuflowError, did_you_mean
from ..targets import Target
from .config import QuantConfig, TensorSettings

_FLOAT = onnx.TensorProto.FLOAT
#: What a precision override may set a layer to (``int8``: as the config resolves it).
PRECISIONS = ("int8", "int16", "float")
#: Tensor kinds an ``int16`` override widens (biases stay int32; a graph input keeps its own settings).
_WIDENED = ("activation", "weight")


@dataclass
class ConstUse:
    """A constant operand of a quantized node."""

    name: str
    role: str  # weight | bias | constant
    node: str
    op_type: str
    axis: int | None
    settings: TensorSettings
    input_tensor: str | None = None  # bias: the activation input of the op
    weight: str | None = None  # bias: the op's weight


@dataclass
class ActPoint:
    """An activation tensor that gets a quantize/dequantize pair."""

    name: str
    kind: str  # input | activation
    owner: str  # node whose settings apply
    settings: TensorSettings
    quantized_producer: bool


@dataclass
class Layer:
    """What one precision override addresses: a quantized node with the activation units the
    target fuses into it (a Conv with its ReLU6 or hard-swish: one quantize step, after the
    activation), or a weightless op with a quantize step of its own (Add, MaxPool, Reshape...),
    named by the node that writes that step's tensor."""

    name: str
    op_type: str
    nodes: list[str]  # node keys, in graph order
    weighted: bool  # it has a quantized weight
    outputs: list[str]  # the activation points it writes
    readers: list[str] = field(default_factory=list)  # other layers reading those points


@dataclass
class QuantPlan:
    quantized: set[str] = field(default_factory=set)  # node names (or first output for unnamed nodes)
    points: dict[str, ActPoint] = field(default_factory=dict)
    internal: set[str] = field(default_factory=set)
    consts: dict[str, ConstUse] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)  # union-find over tensor names
    #: the layers, weighted ones first, each group in graph order
    layers: dict[str, Layer] = field(default_factory=dict)
    #: the precision overrides this plan was built with (layer name -> float | int16)
    overrides: dict[str, str] = field(default_factory=dict)
    #: node keys left in float whatever the checker placed (keep_float, the divisor and non-finite keeps,
    #: whole layers): they run on the CPU, which quantize's node table must say (new-user round 28b)
    kept_float: set[str] = field(default_factory=set)

    def find(self, t: str) -> str:
        root = t
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(t, t) != root:
            self.parent[t], t = root, self.parent[t]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> dict[str, list[str]]:
        """Scale groups with more than one member, keyed by root."""
        out: dict[str, list[str]] = {}
        for t in [*self.points, *self.consts]:
            out.setdefault(self.find(t), []).append(t)
        return {k: v for k, v in out.items() if len(v) > 1}


def node_key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def build_plan(model: onnx.ModelProto, target: Target, config: QuantConfig,
               allowed: set[str] | None = None, overrides: Mapping[str, str] | None = None) -> QuantPlan:
    """The plan of legalised ``model``; ``allowed``: the only node keys that may be quantized
    (the accelerator's nodes, :func:`.placement.accelerator_nodes`), ``None`` for all;
    ``overrides``: layer (node key) -> precision (module docstring).  An override of a node
    that is part of a fused layer applies to the whole layer, as ``keep_float`` does."""
    graph = model.graph
    idx = GraphView(graph)
    types = tensor_elem_types(model)
    structural = _structural_units(graph, idx)
    heads = _bias_heads(graph, idx)
    changed = checked_overrides(overrides or {}, [node_key(n) for n in graph.node])
    floats = {n for n, p in changed.items() if p == "float"}
    cone, forced = _relative_precision_cone(idx, config)
    if allowed is not None:
        # The checker placed the cone of the float graph on the CPU already (a forced member comes back with
        # the user's bit width).  The legalised graph's cone can be wider: B4096 writes HardSwish as
        # Add -> Clip -> Mul -> Mul, range-carrying ops the walk went on through, so a HardSwish check placed
        # on the DPU stayed float and compile ran it on the CPU (tests/unit/test_placement_agreement.py).
        allowed, cone = allowed | forced, set()
    def whole_layers(keys: set[str]) -> set[str]:  # a linear layer's pair and the activations fused into it
        return _with_fused_activations(_with_biases(keys, heads), structural, idx, target, heads)

    keep = whole_layers(set(config.keep_float) | floats | cone)
    wide = whole_layers({n for n, p in changed.items() if p == "int16"})
    plan = QuantPlan(overrides=changed, kept_float=keep)
    inputs = {i.name for i in graph.input} - set(idx.inits)

    def is_float(t: str) -> bool:
        return types.get(t) == _FLOAT

    def data_inputs(node: onnx.NodeProto) -> list[int]:
        return op_def(node.op_type, node.domain).quantized_inputs(node)

    gelu_members = {node_key(n): (n, node_key(u[-1])) for u, _, kind in structural if kind == "gelu" for n in u}
    for node in graph.node:
        quantizable = op_def(node.op_type, node.domain).quantized or node_key(node) in gelu_members
        if not quantizable or node_key(node) in keep:
            continue
        if allowed is not None and node_key(node) not in allowed:
            continue
        if not (all(is_float(node.input[k]) for k in data_inputs(node)) and all(is_float(o) for o in node.output if o)):
            continue
        prod = idx.producer_node(node.input[0])
        if not follows_quantized(node.op_type, prod is not None and node_key(prod) in plan.quantized):
            continue
        plan.quantized.add(node_key(node))
    # a GELU is quantized whole (one table) or left as it was: its Div/Erf/Tanh are no quantized ops alone
    partial = {last for key, (_, last) in gelu_members.items() if key not in plan.quantized}
    plan.quantized -= {key for key, (n, last) in gelu_members.items() if last in partial
                       and not op_def(n.op_type, n.domain).quantized}
    if float_tail_applies(target):
        _float_tail(graph, idx, plan)
    biases = {key: mm for key, mm in heads.items() if key in plan.quantized and node_key(mm) in plan.quantized}
    plan.internal.update(mm.output[0] for mm in biases.values())

    units = _activation_units(structural, plan)
    unit_members: set[str] = set()
    for unit_nodes, x, kind in units:
        members = {node_key(n) for n in unit_nodes}
        unit_members |= members
        plan.internal.update(o for n in unit_nodes[:-1] for o in n.output)
        prod = idx.producer_node(x)
        if prod is None or node_key(prod) not in plan.quantized or idx.is_graph_output(x) or x in idx.inits:
            continue
        layer = biases.get(node_key(prod), prod)  # a bias Add: its MatMul is the layer the activation fuses into
        if all(node_key(c) in members for c in idx.consumer_nodes(x)) and fuses(target, op_kind(layer, idx), kind):
            plan.internal.add(x)

    def resolve(kind: str, node: onnx.NodeProto) -> TensorSettings:
        settings = config.resolve(target, kind, node.op_type, node_key(node))
        if kind in _WIDENED and node_key(node) in wide:
            settings = settings.model_copy(update={"bit_width": 16})
        return settings

    for node in graph.node:
        if node_key(node) not in plan.quantized:
            continue
        d = op_def(node.op_type, node.domain)
        weighted = d.weight is not None
        head = biases.get(node_key(node))
        for k in data_inputs(node):
            t = node.input[k]
            if head is not None and t in idx.inits:
                if head.input[1] in plan.consts:
                    _add_const(plan, ConstUse(t, "bias", node_key(node), node.op_type, 0, resolve("bias", head),
                                              input_tensor=head.input[0], weight=head.input[1]))
                continue
            if t in idx.inits and node_key(node) not in unit_members:
                if d.table and (not d.lowered or node.op_type in CLAMP_OPS):  # a table folds it exactly (a clamp)
                    continue
                if weighted and k == d.weight:
                    _add_const(plan, ConstUse(t, "weight", node_key(node), node.op_type, _weight_axis(node, idx),
                                              resolve("weight", node)))
                else:
                    _add_const(plan, ConstUse(t, "constant", node_key(node), node.op_type, None, resolve("weight", node)))
                continue
            if t in plan.internal or t in plan.points:
                continue
            if t in idx.inits:
                continue
            prod = idx.producer_node(t)
            quantized_prod = prod is not None and node_key(prod) in plan.quantized
            if quantized_prod:
                plan.points[t] = ActPoint(t, "activation", node_key(prod), resolve("activation", prod), True)
            else:
                kind = "input" if t in inputs else "activation"
                plan.points[t] = ActPoint(t, kind, node_key(node), resolve(kind, node), False)
        b = d.bias
        if b is not None and len(node.input) > b and node.input[b] in idx.inits and node.input[d.weight] in plan.consts:
            gemm_scaled = node.op_type == "Gemm" and (attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0)
            if not gemm_scaled:
                _add_const(plan, ConstUse(node.input[b], "bias", node_key(node), node.op_type, 0, resolve("bias", node),
                                          input_tensor=node.input[0], weight=node.input[d.weight]))
        for o in node.output:
            if o and o not in plan.internal and o not in plan.points:
                plan.points[o] = ActPoint(o, "activation", node_key(node), resolve("activation", head or node), True)

    _scale_groups(graph, plan, idx)
    plan.layers = _layers(graph, idx, plan, units, biases)
    return plan


def _bias_heads(graph: onnx.GraphProto, idx: GraphView) -> dict[str, onnx.NodeProto]:
    """{bias ``Add``'s key: its ``MatMul``} for every linear layer written as the pair
    (:func:`npuflow.passes.linear_bias.linear_bias`) with its bias as the float passes write it (a
    1-D initializer, per-channel axis 0); a graph the passes did not see keeps the two ops apart."""
    heads = {}
    for node in graph.node:
        found = linear_bias(node, idx)
        if found is not None and found.bias in idx.inits and idx.const(found.bias).ndim == 1:
            heads[node_key(found.add)] = node
    return heads


def _with_biases(keys: set[str], heads: Mapping[str, onnx.NodeProto]) -> set[str]:
    """``keys`` with both nodes of a linear layer written as ``MatMul -> Add(bias)`` when one is
    in it: a float or 16-bit override of the layer is one of the pair and its bias."""
    out = set(keys)
    for add, mm in heads.items():
        if add in keys or node_key(mm) in keys:
            out |= {add, node_key(mm)}
    return out


def _relative_precision_cone(idx: GraphView, config: QuantConfig) -> tuple[set[str], set[str]]:
    """The node keys of the float cones of ``Log`` and of a peak test (:func:`npuflow.check.cone.float_cones`)
    that stay float, and those a ``layers`` entry naming the node exactly gives a ``bit_width``
    (the user's way to force one back to integers; a ``name_regex`` does not, so a broad pattern
    never undoes the rule by accident).

    On CPU targets this is where the cone is kept float; on accelerator targets the checker has
    already placed it on the CPU (not in ``allowed``), and a forced node is allowed again."""
    named = {layer.name for layer in config.layers
             if layer.name is not None and any(layer.spec(k).get("bit_width") is not None for k in _WIDENED)}
    members = {node_key(idx.nodes[i]) for i in float_cones(idx)}
    return members - named, members & named


def checked_overrides(overrides: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The overrides that change something (``int8`` is the plan's own precision); a precision
    that is not one of :data:`PRECISIONS`, or a name not in ``names``, is a coded error."""
    known = list(names)
    members = set(known)
    for name, precision in overrides.items():
        if precision not in PRECISIONS:
            raise NpuflowError("NPF_QUANT_BAD_PRECISION", value=precision)
        if name not in members:
            raise NpuflowError("NPF_QUANT_UNKNOWN_LAYER", field="precision overrides", name=name,
                               examples=", ".join(repr(n) for n in known[:3]), suggestion=did_you_mean(name, known))
    return {n: p for n, p in overrides.items() if p != "int8"}


def _layers(graph: onnx.GraphProto, idx: GraphView, plan: QuantPlan,
            units: list[tuple[list[onnx.NodeProto], str, str]], biases: Mapping[str, onnx.NodeProto]) -> dict[str, Layer]:
    """The plan's layers (:class:`Layer`): every quantized node belongs to exactly one.

    A linear layer's bias ``Add`` (``biases``: its key -> the ``MatMul``) joins the ``MatMul``'s layer.

    A unit fused into its producer (its input is internal) joins the producer's layer; any
    other unit is a layer of its own, named by its last node (the one writing its quantize
    step's tensor); every other quantized node is a layer."""
    unit_of = {node_key(n): (unit, x) for unit, x, _ in units for n in unit}
    owner: dict[str, str] = {}
    for node in graph.node:
        key = node_key(node)
        if key not in plan.quantized:
            continue
        if key in biases:
            owner[key] = owner[node_key(biases[key])]
        elif key in unit_of:
            unit, x = unit_of[key]
            prod = idx.producer_node(x)
            owner[key] = owner[node_key(prod)] if x in plan.internal and prod is not None else node_key(unit[-1])
        else:
            owner[key] = key
    nodes = {node_key(n): n for n in graph.node}
    members: dict[str, list[str]] = {}
    for key, name in owner.items():
        members.setdefault(name, []).append(key)
    weights = {c.node for c in plan.consts.values() if c.role == "weight"}
    layers = {}
    for name, keys in members.items():
        outputs = [t for t, p in plan.points.items() if p.quantized_producer and p.owner in keys]
        readers = {owner[node_key(c)] for t in outputs for c in idx.consumer_nodes(t) if node_key(c) in owner}
        layers[name] = Layer(name, nodes[name].op_type, keys, bool(weights & set(keys)), outputs,
                             sorted(readers - {name}))
    return {n: layers[n] for n in sorted(layers, key=lambda n: not layers[n].weighted)}


def _float_tail(graph: onnx.GraphProto, idx: GraphView, plan: QuantPlan) -> None:
    """On float-scale (CPU) targets, data movement whose outputs no quantized op reads stays float
    (:func:`npuflow.check.followers.drop_float_tail`, the rule ``check`` places it by)."""
    nodes = {node_key(n): n for n in graph.node}

    def readers(key: str) -> list[str]:
        return [node_key(c) for o in nodes[key].output if o for c in idx.consumer_nodes(o)]

    drop_float_tail(plan.quantized, lambda key: nodes[key].op_type, readers)


def _add_const(plan: QuantPlan, use: ConstUse) -> None:
    if use.name not in plan.consts:  # a constant shared by several nodes is quantized once (first use wins)
        plan.consts[use.name] = use


def _weight_axis(node: onnx.NodeProto, idx: GraphView) -> int | None:
    w = idx.const(node.input[1])
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attr(node, "group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return w.ndim - 1 if w is not None and w.ndim >= 1 else None


def _with_fused_activations(keep: set[str], units: list[tuple[list[onnx.NodeProto], str, str]], idx: GraphView,
                            target: Target, heads: Mapping[str, onnx.NodeProto]) -> set[str]:
    """``keep`` grown to whole fused layers: an activation unit with a kept member, with the node
    the target fuses it into (all readers of that node's output are in the unit), and the unit
    fused into a kept node.

    Keeping a Conv in float but quantizing the ReLU6 it fuses would put a quantize step on the
    Conv's raw output, whose range is far wider than the activation's: keeping EfficientNet-Lite0's
    stem Conv in float on B4096 cost 17 points of FP32 agreement (55.0 -> 37.7 %) instead of
    gaining.  Likewise a legalised hard-swish is one DPU operation: keeping its last ``Mul`` in
    float but not the ``Add -> Clip -> Mul`` before it would split it across the chip and the CPU.
    A fused layer is one layer, as the mixed-precision search's edits treat it.
    """
    out = set(keep)
    for unit, x, kind in units:
        members = {node_key(n) for n in unit}
        prod = idx.producer_node(x)
        layer = heads.get(node_key(prod), prod) if prod is not None else None  # a bias Add fuses as its MatMul
        fused = (prod is not None and not idx.is_graph_output(x) and all(node_key(c) in members for c in idx.consumer_nodes(x))
                 and fuses(target, op_kind(layer, idx), kind))
        if members & keep or (fused and node_key(prod) in keep):
            out |= members | ({node_key(prod)} if fused else set())
            if fused:
                out = _with_biases(out, heads)
    return out


def _structural_units(graph: onnx.GraphProto, idx: GraphView) -> list[tuple[list[onnx.NodeProto], str, str]]:
    """Activation units ``(nodes in order, input x, kind)`` from the graph's structure alone.

    A hard-sigmoid (one node, or the legalised DPU chain) followed by ``Mul(x, hsig)`` is one
    ``hard_swish`` unit; a decomposed GELU (:func:`npuflow.passes.gelu.gelu`) is one ``gelu`` unit
    (no quantize step inside: the compiler lowers it as one table).
    """
    units = [(list(g.nodes), g.x, "gelu") for g in float_gelus(graph, idx) if len(g.nodes) > 1]
    claimed: set[str] = {node_key(n) for unit, _, _ in units for n in unit}
    for node in graph.node:
        if node_key(node) in claimed:
            continue
        chain = _dpu_hsigmoid_chain(node, idx)
        if chain is not None:
            unit, kind = chain, "hard_sigmoid"
        elif activation_kind(node, idx.scalar) in FUSABLE_ACTIVATIONS:
            unit, kind = [node], activation_kind(node, idx.scalar)
        else:
            continue
        if kind == "hard_sigmoid":
            mul = idx.only_consumer(unit[-1].output[0])
            if mul is not None and node.input[0] in mul.input and unit_kind([*unit, mul], idx.scalar) == "hard_swish":
                unit, kind = [*unit, mul], "hard_swish"
        claimed.update(node_key(n) for n in unit)
        units.append((unit, node.input[0], kind))
    return units


def _activation_units(structural: list[tuple[list[onnx.NodeProto], str, str]], plan: QuantPlan):
    """The structural units whose nodes are all quantized (a hard-swish whose ``Mul`` is not:
    its hard-sigmoid chain)."""
    units = []
    for unit, x, kind in structural:
        if kind == "hard_swish" and node_key(unit[-1]) not in plan.quantized:
            unit, kind = unit[:-1], "hard_sigmoid"
        if all(node_key(n) in plan.quantized for n in unit):
            units.append((unit, x, kind))
    return units


def _dpu_hsigmoid_chain(add: onnx.NodeProto, idx: GraphView) -> list[onnx.NodeProto] | None:
    """``Add(x, 3) -> Clip(0, 6) -> Mul(2731/16384)`` starting at ``add`` (the legalised DPU form,
    recognised by :func:`npuflow.activation_patterns.unit_kind`)."""
    if add.op_type != "Add":
        return None
    clip = idx.only_consumer(add.output[0])
    mul = idx.only_consumer(clip.output[0]) if clip is not None else None
    if mul is None or mul.op_type != "Mul" or not is_dpu_hard_sigmoid_scale(idx.scalar(mul.input[1])):
        return None
    chain = [add, clip, mul]
    return chain if unit_kind(chain, idx.scalar) == "hard_sigmoid" else None


def _scale_groups(graph: onnx.GraphProto, plan: QuantPlan, idx: GraphView) -> None:
    """Union tensors that must share one scale (docs/quantized-model-format.md section 4)."""
    def member(t: str) -> bool:
        return t in plan.points or t in plan.consts

    for node in graph.node:
        if node_key(node) not in plan.quantized:
            continue
        outs = [o for o in node.output if o and member(o)]
        d = op_def(node.op_type, node.domain)
        ins = [node.input[k] for k in d.quantized_inputs(node) if member(node.input[k])]
        if d.scale is SharedScale.ALL:
            for t in ins + outs:
                plan.union(outs[0] if outs else ins[0], t)
        elif d.scale is SharedScale.INPUTS_ON_POW2 and len(ins) == 2 and all(t in plan.points for t in ins):
            # a constant operand keeps its own scale: on the activation grid a shift like 0.586 would round to 0.5
            owner = plan.points.get(outs[0]) if outs else None
            if owner is not None and owner.settings.scale_type == "power_of_two":
                plan.union(ins[0], ins[1])
        elif d.scale is SharedScale.OUTPUT_IS_INPUT and ins:
            for o in outs:
                plan.union(ins[0], o)
