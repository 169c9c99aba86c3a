"""Consecutive steps of a frame as one ONNX Runtime session.

A compiled model alternates accelerator programs and CPU subgraphs; with ``fuse`` each program
whose frame is one fused run (:class:`.fused.FusedRun`) and each CPU subgraph on its own session
(:class:`.executors.OnnxExecutor`) is one ONNX Runtime call per frame (PP-OCR cls on cpu-int8:
the network, then its ``DequantizeLinear``, ``Flatten`` and ``Softmax`` of two values; YOLOv8n:
the network, the DFL softmax, the DFL convolution, the concatenation).  Each call pays ONNX
Runtime's run set-up, its output arrays and the executor's Python, and a call after an idle
pays its cold session again.  :func:`steps` writes each stretch of such steps as one graph: every
part's nodes, their internal names prefixed per part, the tensors between parts under their
manifest names, so one call runs the stretch (PP-OCR cls: the whole frame).

Exact: the parts' nodes and constants are the graphs their sessions run, and ONNX Runtime must
run the same kernels for the joined graph as for the parts apart (data movement it may cancel
across a seam aside: ``operators.SEAM_MOVES``, quantize round trips that give back their codes:
:func:`code_round_trips`, and casts to the type their input has: :func:`same_type_casts`).  That is
checked at load from ONNX Runtime's optimised graphs (``ort_kernels.optimized_graph``, its verdict
kept on disk by ``ort_verdicts.keyed_verdict``); where it fails (a quantize step of one part and a
dequantize step of the next that ONNX Runtime would drop as a pair; a fusion one part's options turn
off; YOLOv8n exported with a free batch: the first run's layout ``Transpose`` moved across its seam
with the DFL subgraph), that stretch is not joined, and the longest shorter one from the same step
is tried (YOLOv8n: the next three steps).  After the check, a one-hot's matrix product (Magika's
first Dense) is written as a lookup of its rows (``onehot_gather``: exact by its own proof, so
its different kernels are not compared).  Only parts that ONNX Runtime runs with the same kernels at its full optimisation level join (a CPU
subgraph of power-of-two scales runs at the basic level, which the joined session would not keep: it joins
where the full level fuses nothing in it, :func:`level_free`, PP-OCR cls on B4096's softmax), each node
meaning the same under the joined opset (an older part's node written in the joined opset's form
where that is exact: :func:`_restated`, YOLOv8n's opset-17 ``Split``), and CPU subgraphs on as
many threads as the fused runs.  Dump mode, listeners and
a boundary tensor asked for by name run the parts, as before.  The parts' sessions are dropped
before the joined graph is written, so that its build and ONNX Runtime's creation of it do not
stand beside them in a load's peak memory; a part opens its session again when it runs alone (and
a stretch that fails the check on its first frame).  A fused run read from a stored plan has no
session yet here (``Session``'s load defers it: ``FusedRun.deferred``) and opens one only where it
is left alone: a session opened and dropped left its creation's heap in the process (PP-OCR cls
on B4096, session 30: the join +0.15 MiB peak over the steps apart; deferred, the same peak).
A CPU subgraph of large constants (:data:`APART_BYTES`) stays its own session: see there.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnx.inliner
from onnx import defs

from .. import ort_kernels, ort_verdicts
from ..errors import NpuflowError
from ..graph import GraphView
from ..model_checks import KNOWN_DOMAINS
from ..operators import ADDED_INPUTS_KEEPING_MEANING, ADDED_KEEPING_MEANING, NCHWC_MOVES, NCHWC_SAME_VALUES, SEAM_MOVES
from ..ort_session import open_session
from . import fused, joined_seams, merge, onehot_gather
from .broadcast import full_rank_constants
from .fused_graph import OPSETS
from .fused_run import RUN_OPTIONS
from .executors import ORT_RUN_ERRORS, IntegerExecutor, OnnxExecutor, cpu_level

#: why a stretch of steps is not joined, at debug level: each refused stretch leaves a frame one more call
log = logging.getLogger(__name__)
#: The joined session's second choice of options: ONNX Runtime's ``NoopElimination`` also off.  It drops an
#: ``Add`` of a constant zero only where it knows the other operand's rank, which a CPU part apart often does
#: not (the shapes inside its inlined half-up quantize step) and the joined graph, fed by a fused run's
#: shaped output, does: the quantize step's ``Add`` of zero point 0 ran apart and not joined
#: (openWakeWord's embedding on B4096: 12 calls a frame).  With it off the joined graph keeps that ``Add``,
#: the parts' kernels again.
KEEP_NOOPS = (*fused.DISABLED_OPTIMIZERS, "NoopElimination")
#: A CPU subgraph whose constants (its session's external arrays, ``OnnxExecutor.constant_bytes``) reach
#: this many bytes is not joined: ONNX Runtime's creation of a session holds its constants about three
#: times at once (npuflow's arrays, its own copy, their packed and reordered forms), so a joined session's
#: creation holds every part's together and is the load's peak.  PP-OCRv4 rec on B4096 joined whole (30
#: steps, 6.6 MB of constants, 3.2 MB of them its CTC head's float MatMul): 34.8 MiB peak over a baseline
#: process against ONNX Runtime's 31.7 on the plain QDQ model; with the head apart 29.2, at the same speed
#: (one call more a frame beside a layer of 0.8M weights: benchmarks/results/runtime_mem_s35.md).
APART_BYTES = 1 << 20


@dataclass
class _Part:
    """One step as a graph: its model, external arrays and options, and the manifest tensors of
    its graph inputs and outputs (by the graph's names)."""

    step: merge.Step
    model: onnx.ModelProto
    external: dict[str, np.ndarray]
    names: dict[str, str]
    disabled: tuple[str, ...]
    small: bool


def _part(step: merge.Step) -> _Part | None:
    """``step`` (:func:`_joinable`) as a graph to join, or None where ONNX Runtime runs it below the full
    level and the full level would run other kernels (:func:`level_free`)."""
    executor = step.executor
    if isinstance(executor, IntegerExecutor):
        run = executor.single
        model, external, small = run.model()
        names = {**dict(zip(run.feed_names, run.inputs)),
                 **{o.name: t for o, t in zip(model.graph.output, run.outputs)}}
        return _Part(step, model, external, names, tuple(fused.DISABLED_OPTIMIZERS), small)
    found = executor.model()
    if found is None:
        log.debug("CPU step %s has no graph to join", executor.name)
        return None
    model, external = found
    if model.functions:  # the quantizer's rounding steps (DPU targets' half-up quantize), inlined as
        model = onnx.inliner.inline_local_functions(model)  # ONNX Runtime loads them (EfficientFormer B4096: 21 calls -> 5)
    basic = cpu_level(model) != "all"
    if basic and not (_plain(model) and ort_verdicts.keyed_verdict(
            level_free, _digest(model, external, []), model, external)):  # a custom op's ONNX Runtime knows not
        log.debug("CPU step %s runs at the basic level and other kernels at the full one", executor.name)
        return None
    names = {v.name: v.name for v in [*model.graph.input, *model.graph.output]}
    # a basic-level part is compared at the full level as the joined session runs it (level_free)
    return _Part(step, model, external, names, tuple(fused.DISABLED_OPTIMIZERS) if basic else (), True)


def level_free(model: onnx.ModelProto, external: dict[str, np.ndarray]) -> bool:
    """Whether ONNX Runtime runs the same kernels for ``model`` at its full optimisation level, less
    the fusions a joined session turns off (``fused.DISABLED_OPTIMIZERS``), as at the basic one.  A
    CPU subgraph of power-of-two scales runs at the basic level (``executors.cpu_level``: no fusion
    of its Q/DQ steps into integer kernels), which a joined session would not keep; where the full
    level fuses nothing in it (PP-OCR cls on B4096: its ``DequantizeLinear`` and ``Softmax``) it runs
    the same kernels there and may join.  The joined session never folds a ``Div`` or ``Mul`` by a
    constant into a ``MatMul``'s alpha (``MatMulScaleFusion``, other float rounding), so an attention
    island's ``MatMul -> Div`` (EfficientFormer-style nets on B4096) joins as the two kernels it runs apart.
    The full level's NCHWc ``MaxPool`` counts as the plain one (:func:`plain_layout`: MTCNN's ``PRelu ->
    MaxPool`` islands between the DPU's convolutions, RNet on B4096: 3 calls a frame -> 1)."""
    return plain_layout(Counter(ort_kernels.kernels(model, "all", fused.DISABLED_OPTIMIZERS, external))) \
        == plain_layout(Counter(ort_kernels.kernels(model, "basic", (), external)))


def plain_layout(kernels: Counter) -> Counter:
    """``kernels`` (by ``(domain, op_type)``) with ONNX Runtime's NCHWc kernels that give the plain op's
    values counted as that op and its layout conversions left out (``operators.NCHWC_SAME_VALUES``,
    ``NCHWC_MOVES``): the same values in another layout, not another kernel's rounding."""
    out: Counter = Counter()
    for key, count in kernels.items():
        if key not in NCHWC_MOVES:
            out[NCHWC_SAME_VALUES.get(key, key)] += count
    return out


def _plain(model: onnx.ModelProto) -> bool:
    """No call of a local function, no graph attributes (``If``, ``Loop``): every name is the graph's
    own (a function no node calls, as the quantizer's ``ai.npuflow`` quantize step that PP-OCR cls's
    B4096 softmax subgraph carries, is not written into the joined graph); and no custom operator
    (a domain ONNX Runtime does not implement): such a part's session registers its library or
    Python op (``ort_session.open_session``), which the kernel comparison's does not."""
    called = {(n.domain, n.op_type) for n in model.graph.node}
    return not any((f.domain, f.name) in called for f in model.functions) and all(a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                       for n in model.graph.node for a in n.attribute) \
        and all(n.domain in KNOWN_DOMAINS for n in model.graph.node)


def _restated(node: onnx.NodeProto, domain: str, old: int, new: int) -> list[onnx.NodeProto] | None:
    """``node`` of ``domain`` at its opset ``old`` written as nodes that mean the same at opset
    ``new`` (the node itself where its definition is the same), or None where no exact form is
    known.  ``Split`` 13 -> 18: sizes given as the input mean the same; without them opset 13
    splits into equal parts by the number of outputs (a remainder is an error) and opset 18 asks
    for ``num_outputs``, which with an axis the outputs divide makes the same parts.  An ``axes``
    attribute that became the second input (:func:`_axes_moved`: ``ReduceMean`` 13 -> 18, the
    global LayerNorm statistics of Conv-TasNet's opset-17 CPU subgraphs) goes in as a ``Constant``."""
    if old == new:  # a domain onnx has no schemas of (com.microsoft's) joins at its own opset
        return [node]
    try:
        before, after = (defs.get_schema(node.op_type, v, domain) for v in (old, new))
    except defs.SchemaError:
        return None
    if before.since_version == after.since_version or _only_added(before, after, domain):
        return [node]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if (domain, node.op_type, before.since_version, after.since_version) == ("", "Split", 13, 18):
        if len(node.input) < 2 or not node.input[1]:
            copy.input[:] = node.input[:1]
            copy.attribute.append(onnx.helper.make_attribute("num_outputs", len(node.output)))
        return [copy]
    if _axes_moved(before, after) and len(node.input) == 1:
        axes = [a for a in node.attribute if a.name == "axes"]
        if not axes:  # no axes: every axis, as the new form without its optional input
            return [copy]
        name = f"{node.output[0]}/axes"
        constant = onnx.helper.make_node("Constant", [], [name],
                                         value=onnx.numpy_helper.from_array(np.array(axes[0].ints, np.int64)))
        copy.attribute.remove(next(a for a in copy.attribute if a.name == "axes"))
        copy.input.append(name)
        return [constant, copy]
    return None


def _only_added(before: defs.OpSchema, after: defs.OpSchema, domain: str) -> bool:
    """Whether ``after`` is ``before`` with the same inputs, outputs and at least its types, and only
    attributes whose default keeps the earlier meaning added (``operators.ADDED_KEEPING_MEANING``:
    ``Reshape`` 13 -> 14's ``allowzero``) and only such optional inputs after the others
    (``operators.ADDED_INPUTS_KEEPING_MEANING``: ``Pad`` 13 -> 18's ``axes``), so that a node of ``before``
    means the same under ``after``."""
    added = set(after.attributes) - set(before.attributes)
    types = {t.type_param_str: set(t.allowed_type_strs) for t in after.type_constraints}
    inputs = [(i.name, i.type_str) for i in after.inputs]
    return (set(before.attributes) <= set(after.attributes)
            and [(i.name, i.type_str) for i in before.inputs] == inputs[:len(before.inputs)]
            and all((domain, before.name, i.name) in ADDED_INPUTS_KEEPING_MEANING
                    for i in after.inputs[len(before.inputs):])
            and [(o.name, o.type_str) for o in before.outputs] == [(o.name, o.type_str) for o in after.outputs]
            and all(set(t.allowed_type_strs) <= types.get(t.type_param_str, set()) for t in before.type_constraints)
            and all((key := (domain, before.name, a)) in ADDED_KEEPING_MEANING
                    and after.attributes[a].default_value == onnx.helper.make_attribute(a, ADDED_KEEPING_MEANING[key])
                    for a in added))


def _axes_moved(before: defs.OpSchema, after: defs.OpSchema) -> bool:
    """Whether the only change from schema ``before`` to ``after`` is the ``axes`` attribute become
    the second input (with ``noop_with_empty_axes``, whose default 0 keeps an empty ``axes``
    meaning every axis, as before)."""
    noop = after.attributes.get("noop_with_empty_axes")
    return (noop is not None and noop.default_value.i == 0
            and "axes" in before.attributes and "axes" not in after.attributes
            and [i.name for i in after.inputs] == [before.inputs[0].name, "axes", *(i.name for i in before.inputs[1:])]
            and set(after.attributes) | {"axes"} == set(before.attributes) | {"noop_with_empty_axes"})


def _opsets(models: list[onnx.ModelProto]) -> dict[str, int] | None:
    """The joined model's opsets (each domain's latest among the parts), or None where a node of an
    older part has another definition there that :func:`_restated` cannot write exactly."""
    joined: dict[str, int] = {}
    for m in models:
        for domain, version in _own(m).items():
            joined[domain] = max(version, joined.get(domain, version))
    for m in models:
        versions = _own(m)
        for n in m.graph.node:
            domain = _domain(n)
            if domain not in versions or _restated(n, domain, versions[domain], joined[domain]) is None:
                return None
    return joined


def _domain(node: onnx.NodeProto) -> str:
    """``node``'s domain, the default one as ""."""
    return "" if node.domain == "ai.onnx" else node.domain


def _own(model: onnx.ModelProto) -> dict[str, int]:
    """``model``'s opset of each domain (the default domain as "")."""
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def _join(parts: list[_Part], outputs: list[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[str]] | None:
    """The parts as one model making ``outputs`` (manifest names), its external arrays and its
    inputs (manifest names, in order); None where they cannot be one graph."""
    opsets = _opsets([p.model for p in parts])
    if opsets is None or not all(_plain(p.model) for p in parts):
        return None
    graph = onnx.GraphProto(name="joined")
    external: dict[str, np.ndarray] = {}
    made: set[str] = set()
    inputs: list[str] = []
    for k, p in enumerate(parts):
        def name(x: str, k=k, p=p) -> str:
            return p.names.get(x, f"j{k}/{x}") if x else x

        for v in p.model.graph.input:
            tensor = p.names[v.name]
            if tensor not in made and tensor not in inputs:
                inputs.append(tensor)
                graph.input.append(onnx.ValueInfoProto(name=tensor, type=v.type))
        versions = _own(p.model)
        for i, n in enumerate(p.model.graph.node):
            domain = _domain(n)
            for m, restated in enumerate(_restated(n, domain, versions[domain], opsets[domain])):
                node = graph.node.add()
                node.CopyFrom(restated)
                node.name = f"j{k}/{i}.{m}/{n.name}"  # unique (a fused run's nodes have no names)
                node.input[:] = [name(x) for x in restated.input]
                node.output[:] = [name(x) for x in restated.output]
        for t in p.model.graph.initializer:
            init = graph.initializer.add()
            init.CopyFrom(t)
            init.name = name(t.name)
            if t.name in p.external:
                external[init.name] = p.external[t.name]
        for v in p.model.graph.value_info:
            graph.value_info.append(onnx.ValueInfoProto(name=name(v.name), type=v.type))
        for v in p.model.graph.output:
            made.add(p.names[v.name])
    types = {p.names[v.name]: v.type for p in parts for v in p.model.graph.output}
    if not set(outputs) <= made or made & set(inputs):
        return None
    graph.output.extend(onnx.ValueInfoProto(name=t, type=types[t]) for t in outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = max(p.model.ir_version for p in parts)
    return model, external, inputs


def _digest(model: onnx.ModelProto, external: dict[str, np.ndarray], parts: list[_Part],
            disabled: tuple[str, ...] = ()) -> str:
    """What decides :func:`same_kernels`: the joined model, the parts' options, every constant, and the
    data movement it leaves out (:data:`~npuflow.operators.SEAM_MOVES`, which the verdict's key, of
    this module's source, would not see change)."""
    h = hashlib.sha256(model.SerializeToString())
    h.update(repr((sorted(SEAM_MOVES), sorted(NCHWC_MOVES), sorted(NCHWC_SAME_VALUES.items()), disabled)).encode())
    for p in parts:
        h.update(repr(p.disabled).encode())
    for name in sorted(external):
        h.update(name.encode())
        h.update(np.ascontiguousarray(external[name]).tobytes())
    return h.hexdigest()[:32]


def same_kernels(model: onnx.ModelProto, external: dict[str, np.ndarray], parts: list[_Part],
                 disabled: tuple[str, ...] = tuple(fused.DISABLED_OPTIMIZERS)) -> bool:
    """Whether ONNX Runtime runs the same kernels for the joined ``model`` (its optimisers less
    ``disabled``) as for the parts apart (:data:`npuflow.operators.SEAM_MOVES`, :func:`code_round_trips` and
    :func:`same_type_casts` aside)."""
    return not any(kernel_difference(model, external, parts, disabled))


def kernel_difference(model: onnx.ModelProto, external: dict[str, np.ndarray], parts: list[_Part],
                      disabled: tuple[str, ...] = tuple(fused.DISABLED_OPTIMIZERS)) -> tuple[Counter, Counter]:
    """The kernels ONNX Runtime runs for the joined ``model`` and not for the parts apart, and those it
    runs apart and not joined (by ``(domain, op_type)``, as :func:`same_kernels` counts them): what a
    refused stretch's debug log names."""
    apart: Counter = Counter()
    for p in parts:
        key = _digest(p.model, p.external, [], p.disabled)
        if key not in _APART:
            _APART[key] = _counted(ort_kernels.optimized_graph(p.model, "all", p.disabled, p.external))
        apart += _APART[key]
    together = _counted(ort_kernels.optimized_graph(model, "all", disabled, external))
    return together - apart, apart - together


#: A part's kernels (:func:`_counted`) by its :func:`_digest`: the longest-first search of :func:`steps` tries
#: each step in many stretches (RT-DETR on B4096: 19 stretches, 35 comparisons), and each part's optimised
#: graph is one ONNX Runtime session (a model's first load: 477 sessions, 8.7 of its 10.4 s; kept, 55)
_APART: dict[str, Counter] = {}


def _counted(graph: onnx.GraphProto) -> Counter:
    """The kernels of an optimised ``graph`` that :func:`kernel_difference` compares."""
    found = Counter((n.domain, n.op_type) for n in graph.node if n.op_type not in SEAM_MOVES)
    return plain_layout(found - code_round_trips(graph) - same_type_casts(graph))


def same_but_seams(model: onnx.ModelProto, seamed: onnx.ModelProto, external: dict[str, np.ndarray],
                   disabled: tuple[str, ...] = tuple(fused.DISABLED_OPTIMIZERS)) -> bool:
    """Whether ONNX Runtime runs for ``seamed`` (:func:`.joined_seams.one_quantize_step` or
    :func:`.joined_seams.one_dequantize_step` of ``model``) the
    kernels it runs for ``model``, less the nodes the rewrite removed and with those it wrote, and less
    at most one ``DequantizeLinear -> QuantizeLinear`` pair of one step per new quantize step after a data
    movement, which gives back its codes (:func:`.joined_seams.moved_round_trips`)."""
    def counted(m: onnx.ModelProto) -> Counter:
        graph = ort_kernels.optimized_graph(m, "all", disabled, external)
        return Counter((n.domain, n.op_type) for n in graph.node if n.op_type not in SEAM_MOVES)

    before, after = (Counter((_domain(n), n.op_type) for n in m.graph.node) for m in (model, seamed))
    expected = counted(model)
    expected.update(after - before)
    expected.subtract(before - after)
    found = counted(seamed)
    if any(v < 0 for v in expected.values()) or found - expected:
        return False
    dropped = expected - found
    pairs = joined_seams.moved_round_trips(seamed, external, _round_trip_exact)
    return set(dropped) <= {("", "DequantizeLinear"), ("", "QuantizeLinear")} \
        and dropped[("", "DequantizeLinear")] == dropped[("", "QuantizeLinear")] <= pairs


def same_type_casts(graph: onnx.GraphProto) -> Counter:
    """The ``Cast`` nodes of ``graph`` to the element type their input has already
    (``joined_seams.made_type``), by ``(domain, op_type)``: each gives back the values it read, not a
    kernel that counts.

    Why: a fused run's output is its codes cast to the manifest's type, which its table's ``Gather``
    made in that type already; apart, that ``Cast`` makes the run's graph output and stays, joined
    ONNX Runtime's ``CastElimination`` drops it (Magika on B4096: its LayerNorms' one-value runs, a
    ``Cast`` to int8 of int8 codes before the next CPU part's dequantize step: 4 calls a frame)."""
    view = GraphView(graph)
    return Counter(("" if n.domain == "ai.onnx" else n.domain, n.op_type) for n in view.nodes
                   if n.op_type == "Cast" and n.domain in ("", "ai.onnx")
                   and joined_seams.made_type(view, n.input[0]) == next(
                       (a.i for a in n.attribute if a.name == "to"), None))


def code_round_trips(graph: onnx.GraphProto) -> Counter:
    """The ``DequantizeLinear`` nodes of ``graph`` whose every reader is a ``QuantizeLinear`` of the same
    constant scale and zero point (8-bit, one of each), with those readers, by ``(domain, op_type)``:
    each such pair gives back the codes it read (checked on all 256 codes, :func:`_round_trip_exact`),
    the same values, not a kernel that counts.

    Why: where a seam tensor is also read later (EdgeNeXt on cpu-int8: the stem LayerNorm's output, read
    by the first block and by its residual), ONNX Runtime's transpose optimiser moves the layout
    ``Transpose`` of one part and the cancelling one of the next across the seam's quantize step and
    writes a ``DequantizeLinear -> QuantizeLinear`` pair for the other reader: the frame stayed two
    calls where the parts join into one."""
    view = GraphView(graph)
    inits = view.inits
    found: Counter = Counter()
    for n in view.nodes:
        step = _quantize_step(n, inits, "DequantizeLinear")
        qs = view.consumer_nodes(n.output[0]) if step is not None and not view.is_graph_output(n.output[0]) else []
        if qs and all(_quantize_step(q, inits, "QuantizeLinear") == step for q in qs) and _round_trip_exact(*step):
            found[(n.domain, n.op_type)] += 1
            for q in qs:
                found[(q.domain, q.op_type)] += 1
    return found


def _quantize_step(node: onnx.NodeProto, inits: dict, op_type: str) -> tuple[float, int, int] | None:
    """A standard ``op_type`` node's constant scale, zero point and 8-bit type (ONNX ``TensorProto``
    code) where it has one of each and no attribute but ``axis`` (which one value per tensor leaves
    unused; block or saturation forms are other steps); else None."""
    if node.op_type != op_type or node.domain not in ("", "ai.onnx") or len(node.input) != 3 \
            or any(a.name != "axis" for a in node.attribute) \
            or any(t not in inits for t in node.input[1:]):
        return None
    scale, zp = (onnx.numpy_helper.to_array(inits[t]) for t in node.input[1:])
    if scale.size != 1 or zp.size != 1 or scale.dtype != np.float32 or zp.dtype not in (np.uint8, np.int8):
        return None
    return float(scale.reshape(())), int(zp.reshape(())), inits[node.input[2]].data_type


@ort_verdicts.persistent_check
def _round_trip_exact(scale: float, zp: int, elem_type: int) -> bool:
    """Whether ONNX Runtime's ``DequantizeLinear`` then ``QuantizeLinear`` with float32 ``scale`` and
    zero point ``zp`` of 8-bit ``elem_type`` gives back every one of the 256 codes."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    codes = np.arange(256, dtype=np.int64) + (-128 if dtype == np.int8 else 0)
    inits = [onnx.numpy_helper.from_array(np.float32(scale).reshape(()), "s"),
             onnx.numpy_helper.from_array(np.asarray(zp, dtype).reshape(()), "z")]
    nodes = [onnx.helper.make_node("DequantizeLinear", ["x", "s", "z"], ["v"]),
             onnx.helper.make_node("QuantizeLinear", ["v", "s", "z"], ["y"])]
    try:
        sess = ort_kernels.probe_session(nodes, [onnx.helper.make_tensor_value_info("x", elem_type, [256])], inits,
                                         elem_type)
        return bool(np.array_equal(sess.run(None, {"x": codes.astype(dtype)})[0], codes.astype(dtype)))
    except (*ort_kernels._ORT_REFUSALS, *ORT_RUN_ERRORS):  # a form this ONNX Runtime refuses: not the same
        return False


class Joined:
    """Consecutive steps run as one ONNX Runtime session (module docstring).

    ``run`` takes the step's inputs and returns ``outputs``, the tensors later steps read and the
    model's outputs; with ``dump`` (and :meth:`run_parts`) the parts run one by one, each making
    what it made before.  ``single`` is itself: a frame of this one run is called through
    ``run_fed`` (``session._OneRun``) as a program's one fused run is."""

    def __init__(self, parts: list[merge.Step], session, inputs: list[str], outputs: list[str], name: str) -> None:
        self.parts = parts
        self.session = session
        self.inputs = inputs
        self.feed_names = inputs
        self.outputs = outputs
        self.name = name
        self.single = self
        self._run = fused.direct_run(session)

    def run_fed(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run(self.outputs, feeds, RUN_OPTIONS)
        except ORT_RUN_ERRORS as exc:  # the values, not the model: a CPU part's index past a table's end
            raise NpuflowError("NPF_RUNTIME_SUBGRAPH_FAILED", subgraph=self.name, reason=str(exc)) from None

    def run(self, feeds: dict[str, np.ndarray], dump: Callable | None = None) -> dict[str, np.ndarray]:
        if dump is not None:
            env = self.run_parts(feeds, dump)
            return {o: env[o] for o in self.outputs}
        return dict(zip(self.outputs, self.run_fed(feeds)))

    def run_parts(self, feeds: dict[str, np.ndarray], dump: Callable | None = None) -> dict[str, np.ndarray]:
        """Every tensor the parts make, each part run on its own executor."""
        env = dict(feeds)
        for step in self.parts:
            env.update(step.executor.run({i: env[i] for i in step.inputs}, dump))
        return env


def steps(program_steps: list[merge.Step], subgraphs: list[dict], outputs: set[str], threads: int,
          release: Callable[[], object]) -> list[merge.Step]:
    """``program_steps`` with stretches of two or more joinable steps each as one :class:`Joined`
    step where ONNX Runtime runs the same kernels for it (module docstring): from each step the
    longest such stretch that passes, so that a seam ONNX Runtime would optimise across leaves the
    steps on either side joined; ``outputs``: the model's."""
    able = [_joinable(step.executor, threads) for step in program_steps]  # before a try closes sessions
    result: list[merge.Step] = []
    k = 0
    while k < len(program_steps):
        end = k
        while end < len(program_steps) and able[end]:
            end += 1
        step = None
        while step is None and end - k >= 2:
            step = _stretch(program_steps, k, end, subgraphs, outputs, threads, release)
            end -= step is None
        result.append(program_steps[k] if step is None else step)
        k = end if step is not None else k + 1
    return result


def _stretch(program_steps: list[merge.Step], k: int, end: int, subgraphs: list[dict], outputs: set[str],
             threads: int, release: Callable[[], object]) -> merge.Step | None:
    """``program_steps[k:end]`` as one :class:`Joined` step, or None where they cannot be one."""
    parts = _parts(program_steps[k:end])
    name = "+".join(subgraphs[i]["name"] for step in program_steps[k:end] for i in step.indices)
    if parts is None:
        log.debug("not joined %s: a CPU part runs other kernels at the full level, or its opset", name)
        return None
    later = outputs | {t for step in program_steps[end:] for t in step.inputs}
    made = dict.fromkeys(t for step in program_steps[k:end] for t in step.executor.outputs)
    joined = _join(parts, [t for t in made if t in later])
    if joined is None:
        log.debug("not joined %s: not one graph (opsets, a function call or graph attribute, a cycle)", name)
        return None
    step = _joined(parts, joined, subgraphs, threads, release)
    if step is None:
        log.debug("not joined %s: ONNX Runtime's kernels for it differ from the parts'", name)
    return step


def _parts(stretch: list[merge.Step]) -> list[_Part] | None:
    """The steps as parts (:func:`_part`), or None where one cannot join; the CPU subgraphs and
    their opsets first, so that a stretch that cannot join writes no fused run's model again."""
    cpu = {k: _part(step) for k, step in enumerate(stretch) if isinstance(step.executor, OnnxExecutor)}
    stub = onnx.helper.make_model(onnx.GraphProto(), opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in OPSETS])
    if None in cpu.values() or _opsets([stub, *(p.model for p in cpu.values())]) is None:
        return None
    for step in stretch:  # their sessions, before the fused runs' graphs are written again beside them
        _close(step.executor)
    return [cpu[k] if k in cpu else _part(step) for k, step in enumerate(stretch)]


def _close(executor: IntegerExecutor | OnnxExecutor) -> None:
    """Drop the session of a step being joined; a run of the step alone opens it again."""
    (executor.single if isinstance(executor, IntegerExecutor) else executor).close()


def _joinable(executor: object, threads: int) -> bool:
    """Whether ``executor`` is one ONNX Runtime graph per frame (before :func:`_part` writes it), a
    CPU subgraph's on the fused runs' ``threads`` whose constants are below :data:`APART_BYTES`."""
    if isinstance(executor, IntegerExecutor):
        return executor.single is not None
    return (isinstance(executor, OnnxExecutor) and executor.session is not None and not executor.carried
            and executor.threads == threads and executor.constant_bytes < APART_BYTES)


def _joined(parts: list[_Part], joined: tuple, subgraphs: list[dict], threads: int,
            release: Callable[[], object]) -> merge.Step | None:
    """The step that runs ``parts`` as ``joined`` (:func:`_join`), or None where ONNX Runtime's
    kernels for it differ from theirs."""
    model, external, inputs = joined
    disabled = next((d for d in (tuple(fused.DISABLED_OPTIMIZERS), KEEP_NOOPS)
                     if ort_verdicts.keyed_verdict(same_kernels, _digest(model, external, parts, d),
                                                   model, external, parts, d)), None)
    if disabled is None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("kernels joined only %s, apart only %s", *map(dict, kernel_difference(model, external, parts)))
        return None
    # EfficientFormer-style B: 7 seams' Cast -> Add -> Cast, 21 nodes less, then 6 the other way, 27 less
    for rewrite in (joined_seams.one_quantize_step, joined_seams.one_dequantize_step):
        seamed = rewrite(model, external)  # each kept on its own check, so one refused leaves the other
        if seamed is not model and ort_verdicts.keyed_verdict(same_but_seams, _digest(seamed, external, parts, disabled),
                                                              model, seamed, external, disabled):
            model = seamed
    model = onehot_gather.as_row_lookup(model, external)  # exact by numerics.one_hot_rows' proof: no kernel check
    for p in parts:  # the joined model holds what ONNX Runtime's creation reads
        p.model = p.external = None
    release()
    indices = tuple(i for p in parts for i in p.step.indices)
    session = open_session(full_rank_constants(model), level="all", threads=threads, spinning=threads <= 1,
                           disabled_optimizers=list(disabled), external=external,
                           mem_pattern=all(p.small for p in parts), shared_arena=True)
    outputs = [o.name for o in model.graph.output]
    name = "+".join(subgraphs[i]["name"] for i in indices)
    return merge.Step(Joined([p.step for p in parts], session, inputs, outputs, name), indices, tuple(inputs))
