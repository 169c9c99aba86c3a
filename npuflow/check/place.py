"""``check(model, target)``: where every node of a model runs on a target, and why.

The pipeline: load and normalise the model (static shapes), fold constants so computed pads and
shapes are plain numbers, classify every node (:mod:`.ops`), find fusions (:mod:`.fusion`), judge
each remaining operation against the target's rule (:mod:`.rules`), let followers and layout-only
ops take their neighbours' device, and partition (:mod:`.partition`).  Shape inference runs once;
nothing is executed per node, so checking a 1,000-node model takes well under a second or two.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Mapping, Sequence

import onnx
from onnx import numpy_helper

from ..custom_ops import lookup as lookup_custom_op
from ..errors import NpuflowError
from ..model import ModelLike, infer_static_shapes, load, name_nodes
from ..model_checks import KNOWN_DOMAINS
from ..activation_patterns import unit_kind
from ..operators import CHAIN_OPS, LOWERED_OPS, REWRITTEN_OPS, SHAPE_OPS, TABLE_OPS, WEIGHTED_KINDS, op_def
from ..passes.target_rewrites import Rewrite
from ..targets import Target, load_target
from ..targets.spec import OpRule
from .cone import cone_reason, float_cones
from .data_dependent import note_data_dependent_divisors
from .fusion import find_activation_patterns, fuse, pattern_view
from ..graph import GraphView, attr_values, subgraphs
from ..graph import is_qdq as _is_qdq
from .float_plan import chain_followers, float_chain_ops, float_chain_ops_off_the_cpu, follow_quant_plan
from .nonfinite import sentinel_tensors
from .qcdq import has_qcdq_clip, legalize_qcdq
from .qoperator import is_qlinear, qoperator_to_qdq
from .lowerable import lowering_limit, output_chain, table_lowered
from .quant_facts import QuantFacts, target_runs
from ..node_kinds import ACTIVATION, DYNAMIC_WEIGHT, FOLLOWER, LAYOUT, LAYOUT_KINDS, OpInfo, classify
from .partition import UnionFind, partition, real_consumers, real_producer
from .report import CPU, NPU, CheckReport, NodeReport, Subgraph
from ..targets.judge import rule_reasons
from .rules import hint_for

log = logging.getLogger(__name__)


def check(model: ModelLike, target: str | Target, input_shapes: Mapping[str, Sequence[int]] | None = None) -> CheckReport:
    """Place every node of ``model`` on ``target`` (NPU or CPU) and partition into subgraphs.

    ``model``: an ``.onnx`` path, an ``onnx.ModelProto`` or its bytes, float or quantized (QDQ).
    ``target``: a name from :func:`npuflow.list_targets` (``"DPUCZDX8G_ISA1_B4096"``), a
    fingerprint, an arch.json or target YAML path, or a :class:`~npuflow.Target`.
    ``input_shapes``: ``{input name: dims}`` for the dimensions the model leaves dynamic
    (``{"images": [1, 3, 640, 640]}``); a dynamic batch left open is checked at 1.
    Returns a :class:`CheckReport` (``.nodes``, ``.subgraphs``, ``.summary``, ``.placement()``)."""
    tgt = load_target(target)
    proto, rewrites = _prepare(model, input_shapes, tgt)
    view = GraphView(proto)
    report = _judge(view, tgt)
    _note_rewrites(report, rewrites)
    if not _is_quantized(proto):  # a quantized model's float nodes are decided already
        note_data_dependent_divisors(report, view)
    s = report.summary
    log.info("checked %d nodes on %s: %d NPU, %d CPU, %d subgraph(s)", s["nodes"], tgt.name, s["npu_nodes"],
             s["cpu_nodes"], s["npu_subgraphs"])
    return report


def prepare(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None = None,
            target: Target | None = None) -> onnx.ModelProto:
    """The model as it is checked: normalised; a float model through the float passes that can change
    where a node runs, in ``optimize_float``'s order (the steps marked ``check`` in
    :data:`..passes.optimize.FLOAT_PASSES`: constants folded, decomposed PReLUs as one node, constant
    scales/shifts folded into the layer before, bilinear
    upsamplings as depthwise transposed convolutions and a ``Split`` ``target`` rejects as slices where it
    runs them, 1-D pools as 2-D ones, one-pass variances rewritten, affine blocks folded forward for an
    accelerator ``target``, then the target rewrites); nodes named, ONNX Runtime's QOperator ops rewritten
    into QDQ form and Brevitas' ``Q -> Clip -> DQ`` clips folded as ``compile`` rewrites them
    (:mod:`.qoperator`, :mod:`.qcdq`)."""
    return _prepare(model, input_shapes, target)[0]


def _prepare(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None,
             target: Target | None) -> tuple[onnx.ModelProto, list[Rewrite]]:
    """:func:`prepare`, and the target rewrites it applied or left (``check`` notes them on their nodes)."""
    rewrites: list[Rewrite] = []
    proto = load(model, input_shapes)
    if any(is_qlinear(n) for n in proto.graph.node):  # judged as compile's legalisation leaves it
        name_nodes(proto)
        try:
            qoperator_to_qdq(proto)
        except NpuflowError as exc:  # the model stays as it is, its QOperator ops on the CPU
            log.warning("npuflow compile will refuse this model: [%s] %s", exc.code, exc.message)
        else:
            proto = infer_static_shapes(proto)
    if has_qcdq_clip(proto):  # the clips and the weight steps they read, as compile's legalisation folds them
        name_nodes(proto)
        legalize_qcdq(proto)
        proto = infer_static_shapes(proto)
    if not _is_quantized(proto):
        from ..passes.optimize import float_passes  # onnxscript is slow to import; only here

        # A QDQ model is left as it is: folding would turn quantized weights back into floats.
        proto = float_passes(proto, target, rewrites, for_check=True)
    name_nodes(proto)
    return proto, rewrites


def _note_rewrites(report: CheckReport, rewrites: list[Rewrite]) -> None:
    """Users look for their nodes: a rewritten node that kept its name (the parts a split adds before it are
    ``NAME/block``, ``NAME/stageK``) says what the rewrite did; a node replaced by parts (a ``Split`` as
    ``NAME/partK`` slices) has the note on each part, which reports its own device.  A rewrite left
    is noted on its node where that node runs on the CPU: the detail names the limit the rewritten
    form breaks (a channel max over more channels than the pool window takes)."""
    for r in rewrites:
        own = [n for n in report.nodes if n.name == r.node]
        if not r.applied:
            for n in own:
                if n.device != NPU:
                    n.messages.append(f"not rewritten ({r.rewrite}): {r.detail}")
            continue
        note = f"target rewrite ({r.rewrite}): {r.detail}"
        for n in own or [n for n in report.nodes if n.name.startswith(f"{r.node}/")]:
            n.messages.append(note)


def _is_quantized(proto: onnx.ModelProto) -> bool:
    return any(_is_qdq(n) for n in proto.graph.node)


def _shape_only(view: GraphView) -> list[bool]:
    flags = [False] * len(view.nodes)
    for i, n in enumerate(view.nodes):
        if n.op_type in SHAPE_OPS:
            flags[i] = True
            continue
        ins = [t for t in view.reads(i) if not view.is_const(t)]
        if ins and all((p := view.producer.get(t)) is not None and flags[p] for t in ins):
            flags[i] = True
    return flags


def _listed_but_not_lowered(limit: str, rule: OpRule | None, kind: str, tgt: Target) -> str:
    """``limit``, saying so where the target's data lists the op and only npuflow's compiler lacks it:
    the DPUCV(2)DX8G targets list argmax (cpu-int8 softmax until session 35), and "Softmax has no
    integer lowering" alone read as the target's verdict (round 24)."""
    if rule is None or not limit.endswith("has no integer lowering"):
        return limit
    return (f"{limit} ({tgt.name} lists {kind} as {rule.kernel_type}; npuflow's compiler has no integer program "
            f"for it, so it runs in float on the CPU)")


def _unsupported_reason(info: OpInfo, node: onnx.NodeProto, tgt: Target) -> str:
    if subgraphs(node):
        return (f"{node.op_type} is control flow: it and every node of its branches/body run on the CPU "
                f"(ONNX Runtime); {tgt.device_label} programs have no branches or loops")
    rule = tgt.ops.get(info.kind)
    if info.kind == "batchnorm":
        return (f"BatchNormalization on a tensor of rank other than 3 or 4 neither folds into a convolution "
                f"nor becomes a 1x1 depthwise convolution, and {tgt.name} has no standalone batch-norm op")
    if rule is not None and not rule.supported:
        note = f": {rule.note}" if rule.note else ""
        return f"{node.op_type} ({info.kind}) is not supported on {tgt.name}{note}"
    if info.kind.endswith(DYNAMIC_WEIGHT):
        return f"{node.op_type} with weights computed at run time is not supported on {tgt.device_label}"
    custom = lookup_custom_op(node.domain, node.op_type) if node.domain not in KNOWN_DOMAINS else None
    if custom is not None:
        return f"custom op {node.domain}:{node.op_type}: runs on the CPU with its registered implementation {custom.source}"
    return f"{node.op_type} ({info.kind}) has no {tgt.device_label} implementation on {tgt.name}"


def _judge(view: GraphView, tgt: Target) -> CheckReport:
    n = len(view.nodes)
    hw = tgt.hardware_names()
    infos = [classify(node, view, i) for i, node in enumerate(view.nodes)]
    shape_only = _shape_only(view)
    patterns = find_activation_patterns(view, infos)
    fused = fuse(view, infos, tgt, dict(patterns))
    facts = QuantFacts(view, target_runs(view, tgt))
    _split_unlowered_activations(view, infos, facts, fused, patterns)
    # Shape arithmetic follows its neighbours in a float model (the float passes fold it away);
    # left in a quantized model, it runs at run time on the CPU, where compile keeps it.
    transparent = [infos[i].role == FOLLOWER or (shape_only[i] and not facts.quantized) for i in range(n)]
    float_identities: dict[int, str] = {}
    table_limits: dict[int, str] = {}
    if facts.quantized:
        table_limits = _fuse_output_chains(view, facts, fused, infos, tgt)
        float_identities = _float_identities(view, facts, transparent)
        for i in float_identities:
            transparent[i] = False

    device = [CPU] * n
    reasons: list[list[str]] = [[] for _ in range(n)]
    for i, node in enumerate(view.nodes):
        if transparent[i] or i in fused:
            continue
        if i in float_identities:
            reasons[i].append(float_identities[i])
            continue
        info = infos[i]
        rule = tgt.rule(info.kind)
        if facts.dynamic is not None:  # compile refuses the whole model: every node stays with the CPU
            reasons[i].append(facts.dynamic)
            continue
        limit = lowering_limit(node, facts) or table_limits.get(i)  # what the compiler cannot lower, as it decides
        if rule is None and (tgt.kind != "cpu" or limit is not None or subgraphs(node)):
            reasons[i].append(_unsupported_reason(info, node, tgt))
            continue
        # a kind: cpu target runs every op the compiler lowers (compiler/partition.py); its rules only label them
        reasons[i] = rule_reasons(rule, info.params, hw) if rule is not None else []
        if limit is not None:
            reasons[i].append(_listed_but_not_lowered(limit, rule, info.kind, tgt))
        device[i] = NPU if not reasons[i] else CPU
    kept_float: set[int] = set()  # what the quantizer keeps float wherever it runs
    if not facts.quantized:  # in a quantized model the quantizer has decided: lowering_limit reads it
        kept_float = _keep_cones_float(view, device, reasons, transparent,
                                       frozenset(m for m in fused if infos[m].affine))
        kept_float |= _keep_sentinels_float(view, device, reasons, transparent)
    for m, anchor in fused.items():
        device[m] = device[anchor]
    if facts.quantized:
        _follow_chain_heads(view, device, reasons)
    _demote_until_stable(view, infos, device, reasons, transparent, fused, tgt, facts.quantized, kept_float)
    _place_followers(view, device, transparent)
    sub = partition(view, device, transparent)
    for i in range(n):  # fused and transparent nodes share their anchor's / neighbour's subgraph
        if i in fused:
            sub[i] = sub[fused[i]]
    _follow_subgraphs(view, sub, device, transparent)
    return _build(view, tgt, infos, device, reasons, fused, _per_device(sub, device))


def _float_identities(view: GraphView, facts: QuantFacts, transparent: list[bool]) -> dict[int, str]:
    """``{index: reason}`` of the ``Identity`` nodes of a quantized model that read a dequantize step
    and whose output reaches no quantize step (``DQ -> Identity -> graph output``, a tf2onnx
    output): compile lowers an Identity only as a table between a dequantize and a quantize step,
    so this one runs in ONNX on the CPU, and the dequantize step before it with it.  Followers
    otherwise take their producer's side: check put both on the accelerator, compile on the CPU."""
    found = {}
    for i, node in enumerate(view.nodes):
        p = view.producer_node(node.input[0]) if transparent[i] and node.op_type == "Identity" and node.input else None
        if p is None or not facts.is_dequantize(p):
            continue
        limit = lowering_limit(node, facts)
        if limit is not None:
            found[i] = limit
    return found


def _split_unlowered_activations(view: GraphView, infos: list[OpInfo], facts: QuantFacts, fused: dict[int, int],
                                 patterns: dict[int, int]) -> None:
    """An activation fused into the op before it that the compiler does not lower together with
    that op is an op of its own, judged by its own rule (its pattern's members go back to it).

    In a quantized model: an activation that reads its input through a dequantize step is lowered
    on its own, so where either it or the op before it cannot be lowered the two run apart
    (B4096 ``HardSwish -> Q/DQ -> Relu -> Add`` in a Log cone, seed 1547: the Relu fused into the
    HardSwish was on the DPU in check of the quantized model, on the CPU in compile; cpu-int8
    ``Div(per-channel) -> Q/DQ -> Clip``, seeds 1137 and 1848: the Clip fused into the CPU Div was
    on the CPU in check, lowered by compile).  In a float model: after an op the quantizer does not
    quantize on its own (``OpDef.quantized`` false: a ``Div`` by a constant; not the ``Div`` that ends
    a hard-swish pattern), the quantizer quantizes the activation as an op of its own (a ``Clip``,
    with a quantize step before it) or leaves it float (a ``Relu``, a follower), never fused into the
    op (seeds 2800, 2834, 2864, 2891: ``Div(c) -> Relu`` or ``-> Clip`` fed from a graph input or read by
    CPU ops was on the accelerator as one op in check of the float model, on the CPU in compile)."""
    for m, a in sorted(fused.items()):
        if m < a or m in patterns or infos[m].role != ACTIVATION:
            continue
        anchor, node = view.nodes[a], view.nodes[m]
        if facts.quantized:
            src = view.producer_node(node.input[0]) if node.input else None
            split = src is not None and facts.is_dequantize(src) and \
                (lowering_limit(anchor, facts) is not None or lowering_limit(node, facts) is not None)
        else:
            split = a not in patterns.values() and not _quantized_alone(anchor, infos[a])
        if split:
            del fused[m]
            fused.update({k: m for k, b in patterns.items() if b == m})


def _quantized_alone(node: onnx.NodeProto, info: OpInfo) -> bool:
    """Whether the quantizer quantizes ``node`` as an op of its own: the registry says so, or the float
    passes make a convolution of it (a ``BatchNormalization`` no layer absorbs becomes a 1x1 depthwise
    Conv, ``passes/fold_batchnorm.batchnorm_to_depthwise``, which :func:`.ops.classify` names by that
    convolution's kind).  ShuffleNet's ``Conv(run-time weights) -> BN -> Relu``: the ReLU split off the
    BN went to the CPU in check of the float model, while the quantizer fused it into the BN's Conv."""
    return op_def(node.op_type, node.domain).quantized or \
        (node.op_type in REWRITTEN_OPS and info.kind in WEIGHTED_KINDS)


def _keep_cones_float(view: GraphView, device: list[str], reasons: list[list[str]], transparent: list[bool],
                      folded: frozenset[int]) -> set[int]:
    """The input cone of a ``Log``, a ``Sin``/``Cos`` or a peak test (:mod:`.cone`) runs in float on
    the CPU: on 8 bits the bins of a power spectrum more than ~48 dB below its maximum read 0
    (openWakeWord's mel front end: output cosine 0.84 with the cone on the accelerator, 1.0000 with
    it in float).  The quantizer follows this placement on accelerator targets and keeps the cone
    float on CPU targets.  Returns the cone's nodes."""
    cones = float_cones(view, folded)
    for i, r in cones.items():
        if device[i] == NPU and not transparent[i]:
            device[i] = CPU
            reasons[i].append(cone_reason(view.nodes[r].name, view.nodes[r].op_type))
    return set(cones)


def _keep_sentinels_float(view: GraphView, device: list[str], reasons: list[list[str]],
                          transparent: list[bool]) -> set[int]:
    """The nodes that write or read a tensor carrying a constant with infinities, NaN or sentinel
    magnitudes (:func:`.nonfinite.sentinel_tensors`: an attention mask's ``Where(mask, 0, -inf)``
    and the ``Add`` of it to the scores) run in float on the CPU: the quantizer keeps every node
    that writes or reads a tensor holding such values float (the same test,
    :func:`.nonfinite.finite_values`, on its calibration data), and compile runs them on the CPU.
    Before (2026-12-05), check of the float model put the mask's ``Add`` on the accelerator
    (``F.scaled_dot_product_attention`` with a mask, newuser_flows7b).  Returns those nodes."""
    carried = sentinel_tensors(view)
    kept: set[int] = set()
    for i, node in enumerate(view.nodes):
        hit = next((t for t in [*node.input, *node.output] if t in carried), None) if carried else None
        if hit is None or transparent[i]:
            continue
        kept.add(i)
        if device[i] == NPU:
            device[i] = CPU
            what = f"constant {hit!r}" if carried[hit] == hit else f"{hit!r}, which carries constant {carried[hit]!r},"
            reasons[i].append(f"{'reads' if hit in node.input else 'writes'} {what} holding infinities, NaN, "
                              f"magnitudes >= 2^127 or an attention mask's <= -1e4: no 8-bit grid holds them with "
                              f"the values they meet, so the quantizer keeps it float")
    return kept


def _fuse_output_chains(view: GraphView, facts: QuantFacts, fused: dict[int, int], infos: list[OpInfo],
                        tgt: Target) -> dict[int, str]:
    """In a quantized model the compiler lowers a layer together with the float nodes between it
    and its quantize step (its epilogue, or the lookup table of an activation chain:
    :func:`.lowerable.output_chain`), so those nodes are fused into the layer here, as activation
    patterns are in a float model: they run where the layer runs.

    Returns ``{layer: reason}`` for the lookup tables (:func:`.lowerable.table_lowered`; not a
    layer's epilogue, its bias ``Add``) that compute an op the accelerator refuses by its own rule,
    or has no operation for (not an epilogue op, ``OpDef.chain``): the layer's rule judges only the
    layer, and a ``Div`` by a constant (a 1x1 depthwise convolution on a DPU)
    cannot compute the ``Sigmoid`` of its table (B4096 seed 2482: ``DQ -> Div(c) -> Sigmoid -> Q``
    was one integer op on the DPU, which has no sigmoid; check of the float model ran both on the
    CPU), nor a ``LeakyRelu`` of a slope other than the DPU's.  The table as a whole is judged too:
    the legalised DPU hard-swish ``Add(x, 3) -> Clip -> Mul(2731/16384) -> Mul(x, .)`` passes member
    by member on DPUCAHX8H_ISA2_DWC (a depthwise ``Add``, a ``relu6``, chain ``Mul``s), which has no
    hard-swish (targets_sweep_s27: PP-OCR cls's 9 hard-swishes were on the CPU in check of the float
    model, on the DPU in compile).  A ``kind: cpu`` target runs every table the compiler lowers."""
    limits: dict[int, str] = {}
    scalar = pattern_view(view).scalar
    for i, node in enumerate(view.nodes):
        if i in fused or node.op_type not in LOWERED_OPS | TABLE_OPS or len(node.output) != 1 or not node.output[0]:
            continue
        found = output_chain(node, node.output[0], facts)
        judged = tgt.kind != "cpu" and table_lowered(node, facts)  # an epilogue is the layer's (a bias Add)
        unit = unit_kind(found[0], scalar) if judged and found is not None and len(found[0]) > 1 else None
        if unit is not None and tgt.rule(unit) is None:
            limits[i] = (f"its lookup table computes a {unit} ({' -> '.join(n.op_type for n in found[0])}), which "
                         f"the {tgt.device_label} of {tgt.name} does not run, so the table runs on the CPU")
        for member in found[0] if found is not None else []:
            j = view.position(member)
            if j == i:
                continue
            fused[j] = i  # also a pattern found inside the chain (the Clip of a hard-sigmoid)
            rule = tgt.rule(infos[j].kind)
            if judged and i not in limits and (member.op_type not in CHAIN_OPS if rule is None
                                               else rule_reasons(rule, infos[j].params, tgt.hardware_names())):
                limits[i] = (f"its lookup table also computes {member.op_type} {member.name!r}, which the "
                             f"{tgt.device_label} of {tgt.name} does not run (its own rule), so the table runs on the CPU")
    return limits


def _follow_chain_heads(view: GraphView, device: list[str], reasons: list[list[str]]) -> None:
    """In a quantized model an elementwise op fed by another elementwise op (not through a
    dequantize step) is lowered only inside that op's lookup table or epilogue chain
    (:func:`.lowerable.chain_to_quantize`); when that op runs on the CPU, so does this one."""
    for i, node in enumerate(view.nodes):
        if device[i] != NPU or node.op_type not in TABLE_OPS:
            continue
        head = next((p for name in node.input if (p := view.producer.get(name)) is not None
                     and device[p] == CPU and view.nodes[p].op_type in TABLE_OPS), None)
        if head is not None:
            device[i] = CPU
            reasons[i].append(f"it is computed in the activation chain of {view.nodes[head].name!r}, "
                              f"which runs on the CPU")


def _neighbours(view: GraphView, i: int) -> list[int]:
    out = []
    for t in view.data_inputs(i):
        p = view.data_producer(t)
        if p is not None:
            out.append(p)
    for o in view.nodes[i].output:
        out.extend(view.data_consumers(o))
    return out


def _demote_until_stable(view: GraphView, infos: list[OpInfo], device: list[str], reasons: list[list[str]],
                         transparent: list[bool], fused: dict[int, int], tgt: Target, quantized: bool,
                         kept_float: set[int]) -> None:
    """The neighbour rules (lonely layout, tail movers, and in a float model the float-chain ops
    and the quantizer's data-movement rule) each read their neighbours' devices, and each only
    moves nodes to the CPU, so they repeat until nothing moves; fused nodes follow their layer
    after every round.

    Run once in a fixed order, a later rule's demotion left an earlier rule's decision stale:
    ``x -> Slice -> Div -> Concat`` (the Slice on the graph input goes to the CPU by the data-movement
    rule, after the float-chain rule had kept the Div it feeds on the accelerator) and
    ``Concat(x, Slice(x))`` before an output on B4096 (a tail mover only once its Slice has moved)
    were placed on the accelerator, while quantize and compile left them in float on the CPU
    (``tests/unit/test_placement_agreement.py``).

    The lonely-layout and tail-mover rules weigh transfers, which a ``kind: cpu`` target does not
    have: there compile lowers every op it can (:mod:`npuflow.compiler.partition`), so compile is the
    limit and check follows it (light SqueezeNet's Concat ``n60`` of a CPU and an accelerator ReLU
    before a CPU conv was on the CPU in check, lowered by compile on cpu-int8)."""
    chain = set() if quantized else float_chain_ops(view, transparent, fused)
    chained = chain_followers(view, transparent, fused, chain) if chain else set()
    candidates = sorted(chain | chained)
    before = None
    while before != device:
        before = list(device)
        if tgt.kind != "cpu":  # both save transfers; a kind: cpu target has none and compile lowers every op it can
            _demote_lonely_layout(view, infos, device, reasons, transparent, tgt)
            _demote_tail_movers(view, infos, device, reasons, transparent, tgt)
        if not quantized:  # in a quantized model the quantizer has decided: lowering_limit reads it
            float_chain_ops_off_the_cpu(view, device, reasons, transparent, fused, candidates)
            follow_quant_plan(view, device, reasons, transparent, fused, tgt, chained, kept_float)
        for m, anchor in fused.items():
            device[m] = device[anchor]


def _demote_lonely_layout(view, infos, device, reasons, transparent, tgt) -> None:
    """Reshape/transpose runs on the NPU only as part of NPU work, never as a subgraph of its own."""
    layout = [i for i in range(len(view.nodes)) if infos[i].role == LAYOUT and device[i] == NPU]
    if not layout:
        return
    uf = UnionFind()
    is_layout = set(layout)
    anchored: set[int] = set()
    for i in layout:
        uf.find(i)
        for j in _neighbours(view, i):
            if j in is_layout:
                uf.union(i, j)
    for i in layout:
        if any(device[j] == NPU and j not in is_layout and not transparent[j] for j in _neighbours(view, i)):
            anchored.add(uf.find(i))
    for i in layout:
        if uf.find(i) not in anchored:
            device[i] = CPU
            reasons[i].append(f"layout-only op with no {tgt.device_label} neighbour stays on the CPU "
                              f"(it would be a subgraph of its own)")


#: Ops that only move data: on the accelerator they compute nothing the CPU could not.  Slices
#: too: openWakeWord's hey_mycroft splits each LSTM output with Slice + Squeeze into a Concat
#: that feeds the next LSTM; a Slice that did not count left that Concat on the DPU in check,
#: while compile (its quantizer left it in float) ran it on the CPU.
_MOVER_KINDS = LAYOUT_KINDS | {"concat", "strided_slice"}


def _demote_tail_movers(view, infos, device, reasons, transparent, tgt) -> None:
    """Concats/reshapes/transposes that carry CPU results and feed no accelerator work run on the CPU.

    On the accelerator they would only copy: the CPU result goes up (quantized to the joined
    tensor's one scale), comes back down, and nothing was computed.  YOLOv8's output Concat is
    the case that matters: its pixel boxes come from the NPU and its class scores from a CPU
    Sigmoid; joined on a power-of-two target the boxes' scale (2.5 px per step) turns every class
    score into 0.  Candidates are the movers that read CPU data (directly or through other
    movers); any that feeds accelerator work outside the set stays, until the set is stable.
    """
    carries_cpu: set[int] = set()
    for i in range(len(view.nodes)):  # graph order is topological
        if device[i] != NPU or transparent[i] or infos[i].kind not in _MOVER_KINDS:
            continue
        producers = [real_producer(view, transparent, t) for t in view.data_inputs(i)]
        if any(p is not None and (device[p] == CPU or p in carries_cpu) for p in producers):
            carries_cpu.add(i)
    changed = True
    while changed:
        changed = False
        for i in sorted(carries_cpu):
            if any(device[c] == NPU and c not in carries_cpu for c in real_consumers(view, transparent, i)):
                carries_cpu.discard(i)
                changed = True
    for i in sorted(carries_cpu):
        device[i] = CPU
        reasons[i].append(f"only moves data that comes from the CPU and goes back to it; on the "
                          f"{tgt.device_label} it would cost two transfers and a shared quantization scale")


def _place_followers(view: GraphView, device: list[str], transparent: list[bool]) -> None:
    """Q/DQ/Identity follow the compute node they are fed by (else the one they feed); shape
    arithmetic follows its consumer.  A dequantize step read by a CPU node runs on the CPU even
    where accelerator nodes read it too: they read its integers, and ``compile`` runs the step in
    ONNX for the CPU reader (an integer dequantize op only writes a graph output).  Before
    (2026-12-05), ``x -> Q -> DQ -> (LayerNorm on the CPU, residual Add)`` put the DQ on the
    accelerator in check (newuser_flows7a R5: ONNX Runtime's QDQ attention models)."""
    n = len(view.nodes)
    for i in range(n):
        if not transparent[i]:
            continue
        node = view.nodes[i]
        ins = view.data_inputs(i)
        p = view.data_producer(ins[0]) if ins else None
        is_dq = node.op_type.startswith("Dequantize")
        if p is not None and not transparent[p] and not is_dq:
            device[i] = device[p]
            continue
        cons = [c for o in node.output for c in view.data_consumers(o) if not transparent[c]]
        if cons:
            device[i] = NPU if (all if is_dq else any)(device[c] == NPU for c in cons) else CPU
        elif p is not None:
            device[i] = device[p]


def _follow_subgraphs(view: GraphView, sub, device, transparent) -> None:
    """A transparent node joins the subgraph of its producer, else of its first reader, on its
    own device; an accelerator follower with neither (nothing to serve there) runs on the CPU."""
    def joins(j: int | None, i: int) -> bool:
        return j is not None and sub[j] is not None and device[j] == device[i]

    for i in range(len(view.nodes)):
        if not transparent[i]:
            continue
        node = view.nodes[i]
        ins = view.data_inputs(i)
        p = view.data_producer(ins[0]) if ins else None
        if joins(p, i) and not node.op_type.startswith("Dequantize"):
            sub[i] = sub[p]
            continue
        cons = [c for o in node.output for c in view.data_consumers(o) if joins(c, i)]
        if cons:
            sub[i] = sub[cons[0]]
        elif joins(p, i):
            sub[i] = sub[p]
        elif device[i] == NPU:
            device[i] = CPU


def _per_device(sub: list[int | None], device: list[str]) -> list[int | None]:
    """The partition's subgraph numbers renumbered per device, in run order: NPU subgraph 0, 1, …
    and CPU subgraph 0, 1, … (what the report and the performance model name them)."""
    numbers: dict[tuple[str, int], int] = {}
    seen: Counter[str] = Counter()
    for dev, s in sorted({(device[i], s) for i, s in enumerate(sub) if s is not None}, key=lambda k: k[1]):
        numbers[(dev, s)] = seen[dev]
        seen[dev] += 1
    return [None if s is None else numbers[(device[i], s)] for i, s in enumerate(sub)]


def _attr_value(v):
    """An attribute's value (:func:`npuflow.graph.attr_values`) as the report shows it."""
    if isinstance(v, onnx.TensorProto):
        arr = numpy_helper.to_array(v)
        return arr.tolist() if arr.size <= 16 else f"tensor{list(arr.shape)}"
    if isinstance(v, list):
        return [x for x in v if isinstance(x, (int, float, str))]
    if isinstance(v, (int, float, str)):
        return v
    return str(type(v).__name__)


def _build(view, tgt, infos, device, reasons, fused, sub) -> CheckReport:
    names = view.names
    nodes: list[NodeReport] = []
    for i, node in enumerate(view.nodes):
        info = infos[i]
        anchor = fused.get(i)
        rule = tgt.rule(infos[anchor if anchor is not None else i].kind)
        on_npu = device[i] == NPU
        kernel = (rule.kernel_type if rule is not None and rule.kernel_type else node.op_type) if on_npu else node.op_type
        rs = list(reasons[i]) if anchor is None else ([f"fused into {names[anchor]}, which runs on the CPU"] if not on_npu else [])
        hint = ""
        if not on_npu:
            hints = []
            for r in reasons[anchor if anchor is not None else i]:
                h = hint_for(r, tgt.device_label)
                if h not in hints:
                    hints.append(h)
            if not reasons[i] and anchor is None:
                hints.append("Placed with its neighbours (quantize/shape/identity ops follow the op they serve).")
            hint = " ".join(hints)
        messages = []
        if on_npu and node.op_type in ("Transpose", "Reshape", "Flatten") and info.role == LAYOUT:
            messages.append("the accelerator works on NHWC data: layout ops may become permutes at deployment")
        input_nodes = sorted({names[p] for t in node.input if t and (p := view.producer.get(t)) is not None},
                             key=names.index)
        output_nodes = []
        for o in node.output:
            for c in view.consumers.get(o, []):
                if names[c] not in output_nodes:
                    output_nodes.append(names[c])
        nodes.append(NodeReport(
            name=node.name, op_type=node.op_type, device=device[i], subgraph=sub[i] if on_npu else None,
            cpu_subgraph=None if on_npu else sub[i],
            kernel_type=kernel, op_kind=info.kind, fused_into=names[anchor] if anchor is not None else None,
            reasons=rs, hint=hint, inputs=list(node.input), outputs=list(node.output),
            input_nodes=input_nodes, output_nodes=output_nodes,
            output_shape=view.shape(node.output[0]) if node.output and node.output[0] else None,
            attributes={k: _attr_value(v) for k, v in attr_values(node).items()},
            params=dict(info.params), messages=messages,
        ))
    return CheckReport(target=tgt, model=view.model, nodes=nodes, subgraphs=_subgraphs(view, nodes),
                       graph_name=view.graph.name)


def _subgraphs(view: GraphView, nodes: list[NodeReport]) -> list[Subgraph]:
    count = max((n.subgraph for n in nodes if n.subgraph is not None), default=-1) + 1
    members: list[list[int]] = [[] for _ in range(count)]
    for i, n in enumerate(nodes):
        if n.subgraph is not None:
            members[n.subgraph].append(i)
    out = []
    for sid, idx in enumerate(members):
        inside = set(idx)
        produced = {o for i in idx for o in view.nodes[i].output if o}
        inputs: list[str] = []
        outputs: list[str] = []
        for i in idx:
            for t in view.nodes[i].input:
                if t and t not in produced and t not in view.inits and t not in inputs:
                    inputs.append(t)
            for o in view.nodes[i].output:
                if not o:
                    continue
                external = any(c not in inside for c in view.consumers.get(o, []))
                if (external or o in view.graph_outputs) and o not in outputs:
                    outputs.append(o)
        out.append(Subgraph(id=sid, device=NPU, nodes=[view.nodes[i].name for i in idx], inputs=inputs, outputs=outputs))
    return out
