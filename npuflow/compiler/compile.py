"""``npuflow.compile``: quantized ONNX model -> :class:`CompiledModel`.

Steps: index the Q/DQ steps (:mod:`.qgraph`); lower every node that can be lowered into an
integer op (:mod:`.lowering`); ask the placement (checker or target rules) which integer ops the
accelerator takes; partition into subgraphs (:mod:`.partition`); export each CPU subgraph as a
standalone ONNX model that keeps the quantized model's own Q/DQ steps; plan each accelerator
subgraph's activation memory (:mod:`.memory`); and describe it all in a manifest.  Compiler
plugins (:mod:`npuflow.plugins`) named by the caller take their nodes first; each of their
subgraphs is stored as ONNX plus the plugin's own compiled payload.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from .. import __version__
from .. import plugins as plugin_registry
from ..check.place import name_nodes
from ..check.quant_facts import dynamic_quantization
from ..errors import NpuflowError
from ..graph import attr, node_reads, rename_outer_reads, slice_nodes, subgraphs, unique_name
from ..model import InputShapes, ModelLike, control_flow_nodes, infer_static_shapes, load, read_proto
from ..operators import SHAPE_OPS
from ..passes.fold_constants import fold_static_shapes
from ..placement import Device, is_plugin, plugin_name
from ..quant import QuantizedModel
from ..targets import Target, list_targets, load_target
from . import artifact, foreign, memory
from .compiled import CompiledModel, with_shapes
from .input_steps import clipping_steps
from .lowering import lower_dequantize, lower_node, lower_quantize, lower_requantize
from .partition import (PlacementRule, Unit, build_units, checker_placement_factory, checker_verdicts, partition,
                        plugin_units)
from .program import IntOp
from .qgraph import QGraph

log = logging.getLogger(__name__)


def _produce_constant_outputs(model: onnx.ModelProto) -> None:
    """Give a model output that is an initializer (a constant the graph returns, or an
    ``Identity`` of one the float passes folded) a producer: an ``Identity`` of the constant, renamed,
    which the partition puts in a CPU subgraph.  No subgraph wrote such an output before, and the
    ``.npuf`` compiled but its loader refused it (``tensor 'k' is not described in tensors``)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for out in graph.output:
        if out.name not in inits:
            continue
        fresh = unique_name(graph, f"{out.name}_const")
        inits[out.name].name = fresh
        for node in graph.node:
            for k, t in enumerate(node.input):
                if t == out.name:
                    node.input[k] = fresh
            rename_outer_reads(node, {out.name: fresh})
        graph.node.append(helper.make_node("Identity", [fresh], [out.name],
                                                unique_name(graph, f"{out.name}_identity")))


def compile_model(
    quantized_model: ModelLike | QuantizedModel,
    target: str | Target,
    *,
    placement: PlacementRule | None = None,
    build_config: dict | None = None,
    preprocessing: dict | None = None,
    input_shapes: InputShapes | Sequence[InputShapes] | None = None,
    plugins: Sequence[str | plugin_registry.Plugin] | None = None,
) -> CompiledModel:
    """Compile a quantized model (``docs/quantized-model-format.md``) for ``target``.

    ``quantized_model``: what :func:`npuflow.quantize` returns, or a QDQ model as a path, an
    ``onnx.ModelProto`` or its bytes.  ``target``: a name or a :class:`~npuflow.Target` (the one
    it was quantized for).  ``placement``: a rule ``(op, model, target) -> reason or None`` that
    keeps an integer op off the accelerator (default: ``npuflow.check``'s placement).
    ``build_config`` and ``preprocessing`` (``{input: {...}}``, e.g. ``layout_rt``): recorded in
    the ``.npuf``, as ``npuflow build`` writes them.

    ``input_shapes`` freezes dynamic input dimensions (``{name: dims}``, as ``--input-shape``); a
    list of such dicts compiles one program per shape set into one model (rknn-toolkit2's
    ``dynamic_input``: the runtime runs the smallest that fits an input, padded; see
    :func:`.compiled.with_shapes`).  Models written by other tools (ONNX Runtime QOperator, NNCF,
    Brevitas) are first legalised into npuflow's QDQ form (:mod:`.foreign`); each change is a note
    of the compiled model.  ``plugins``: compiler plugins (names or :class:`~npuflow.plugins.Plugin`
    objects), in order, that take their nodes before the accelerator placement.  A
    :class:`~npuflow.quant.QuantizedModel` (what ``npuflow.quantize`` and
    ``npuflow.torch.quantize`` return) compiles its ``model``, or its ``dynamic_model`` when
    ``input_shapes`` freezes the dims it leaves open.
    """
    if isinstance(quantized_model, QuantizedModel):
        quantized_model = quantized_model.model if input_shapes is None else quantized_model.dynamic_model
    tgt = target if isinstance(target, Target) else load_target(target)
    plugs = plugin_registry.resolve(plugins)
    if input_shapes is not None and not isinstance(input_shapes, Mapping):
        sets = list(input_shapes)
        if len(sets) > 1:
            source = quantized_model if isinstance(quantized_model, onnx.ModelProto) else read_proto(quantized_model)
            programs = [_compile(source, tgt, placement, build_config, preprocessing, shapes, plugs) for shapes in sets]
            return _self_checked(with_shapes(programs), tgt)
        input_shapes = sets[0] if sets else None
    return _compile(quantized_model, tgt, placement, build_config, preprocessing, input_shapes, plugs)


def _compile(quantized_model: ModelLike, tgt: Target, placement: PlacementRule | None, build_config: dict | None,
             preprocessing: dict | None, input_shapes: InputShapes | None,
             plugs: Sequence[plugin_registry.Plugin] = ()) -> CompiledModel:
    """One program: the model frozen at ``input_shapes``."""
    model = _shape_arithmetic_folded(load(quantized_model, input_shapes))
    _produce_constant_outputs(model)
    name_nodes(model)
    if (dynamic := dynamic_quantization(model.graph.node)) is not None:  # check keeps every node on the CPU with it
        raise NpuflowError("NPF_COMPILE_DYNAMIC_QUANTIZATION", reason=dynamic, target=tgt.name)
    legalised = foreign.legalize(model, tgt)
    if legalised:
        model = infer_static_shapes(model)
    legalised += foreign.check_target_numerics(model, tgt)
    g = QGraph(model, tgt)
    if not any(g.quantize_mode(n) is not None or g.is_dequantize(n) for n in model.graph.node):
        if holders := control_flow_nodes(model):
            raise NpuflowError("NPF_QUANT_CONTROL_FLOW_ONLY", nodes=", ".join(holders))
        raise NpuflowError("NPF_COMPILE_NOT_QUANTIZED")
    verdict = checker_verdicts(model, tgt) if placement is None else {}
    place = placement or checker_placement_factory(model, tgt, verdict)
    owner = plugin_registry.claimed_nodes(plugs, model, tgt) if plugs else {}
    taken = plugin_units(g, owner)
    ops, notes = _lower_all(g, model, tgt, place, set(taken), verdict)
    notes = legalised + [f"{node} runs on the {name} plugin" for node, name in owner.items()] + notes
    units = build_units(g, ops, taken)
    groups = _live(partition(units), g)
    manifest, blobs = _describe(g, model, tgt, groups, notes, build_config, preprocessing,
                                {p.name: p for p in plugs})
    return _self_checked(CompiledModel(manifest, blobs), tgt)


def _self_checked(compiled: CompiledModel, tgt: Target) -> CompiledModel:
    """``compiled``, once its file's bytes pass what every load of a ``.npuf`` checks (the manifest
    schema, each subgraph's tensors and embedded ONNX interface, each integer op's shapes and
    ranges, :mod:`.manifest_check`).

    A ``.npuf`` that compiles must load and run: a lowering that writes an op the reader refuses is
    npuflow's bug, and is named as one here, before anything is written or run.  Before
    (2026-12-06), a reversing ``Slice`` lowered with a wrong stop compiled without a word and every
    load then called the file "truncated or corrupt; compile the model again", which sent the user
    the wrong way.  The check's verdict is remembered like a load's (:mod:`.manifest_verdicts`),
    so the first load of the saved file does not repeat it."""
    try:
        artifact.NpufFile.in_memory(compiled.to_bytes(), "the compiled program")
    except NpuflowError as exc:
        if exc.code != "NPF_COMPILE_CORRUPT":
            raise
        raise NpuflowError("NPF_COMPILE_SELF_CHECK", target=tgt.name, reason=exc.fields["reason"]) from None
    return compiled


def _lower_all(g: QGraph, model: onnx.ModelProto, tgt: Target, place: PlacementRule,
               taken: set[str] = frozenset(), verdict: dict[str, str | None] | None = None,
               ) -> tuple[list[IntOp], list[str]]:
    """Integer ops for the accelerator; ``taken``: nodes of plugins, never lowered here.

    A node left unlowered is noted with the checker's reasons where the checker (``verdict``) puts
    it on the CPU: the quantizer leaves in float a layer the target cannot run, and the lowering's
    own reason ("constant ... is not a quantized initializer") would hide that limit (DS-CNN's
    10x4 first conv on bernoulli2, 2026-12-07)."""
    verdict = verdict or {}
    ops: list[IntOp] = []
    notes: list[str] = []
    claimed: set[str] = set(taken)

    def take(op: IntOp) -> None:
        ops.append(op)
        claimed.update(op.nodes)

    for n in model.graph.node:
        if n.name in claimed or g.quantize_mode(n) is not None or g.is_dequantize(n):
            continue
        if subgraphs(n):
            notes.append(f"{n.name} ({n.op_type}) runs on CPU: control flow; it and its branches/body run in "
                         f"ONNX Runtime, reading what they need from the graph as subgraph inputs")
            continue
        result = lower_node(g, n)
        if isinstance(result, str):
            notes.append(f"{n.name} ({n.op_type}) runs on CPU: {verdict.get(n.name) or result}")
            continue
        if any(x in claimed for x in result.nodes):
            notes.append(f"{n.name} ({n.op_type}) runs on CPU: its nodes overlap another integer op")
            continue
        reason = place(result, model, tgt)
        if reason is not None:
            notes.append(f"{n.name} ({n.op_type}) runs on CPU: {reason}")
            continue
        take(result)
    npu_reads = {r for op in ops for r in op.reads}
    produced = {o for op in ops for o in op.outputs}
    for n in model.graph.node:
        if n.name in claimed:
            continue
        if g.quantize_mode(n) is not None:
            feeds_npu = any(c.name in npu_reads for c in g.consumer_nodes(n.output[0]))
            if not feeds_npu:
                continue
            op = lower_quantize(g, n) or (lower_requantize(g, n) if g.dq_source(n.input[0]) else None)
            if op is not None and not (op.op == "lut" and not set(op.inputs) <= produced | set(g.graph_inputs)):
                take(op)
                produced.update(op.outputs)
        elif g.is_dequantize(n) and n.input[0] in produced:
            op = lower_dequantize(g, n)
            if op is not None:
                take(op)
    for note in notes:
        log.info(note)
    return ops, notes


def _dtype_name(g: QGraph, name: str) -> str:
    et = g.elem_types.get(name)
    if et is None:
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"tensor {name!r} has no type")
    return np.dtype(helper.tensor_dtype_to_np_dtype(et)).name


def _tensor_info(g: QGraph, name: str) -> dict:
    shape = g.shapes.get(name)
    if shape is None:
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"tensor {name!r} has no static shape")
    info = {"dtype": _dtype_name(g, name), "shape": list(shape)}
    q = g.producer_node(name)
    p = g.quantize_params(q) if q is not None else None
    if p is not None:
        info["quant"] = p.to_json()
    return info


def _boundaries(groups: list[list[Unit]], g: QGraph) -> list[tuple[list[str], list[str]]]:
    made_in = {}
    for k, units in enumerate(groups):
        for u in units:
            for o in u.outputs:
                made_in[o] = k
    read_by: dict[str, set[int]] = {}
    for k, units in enumerate(groups):
        for u in units:
            for i in u.inputs:
                read_by.setdefault(i, set()).add(k)
    out = []
    for k, units in enumerate(groups):
        ins: list[str] = []
        for u in units:
            for i in u.inputs:
                if made_in.get(i) != k and i not in ins:
                    ins.append(i)
        outs = [o for u in units for o in u.outputs
                if g.is_graph_output(o) or read_by.get(o, set()) - {k}]
        out.append((ins, outs))
    return out


def _shape_arithmetic_folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (frozen, static shapes) with the shape arithmetic that freezing made constant folded
    (quantize and dequantize steps never), as the quantizer's frozen view of its graph folds it.

    Why: ``quantized_model.onnx`` keeps the source's dynamic batch, and a TorchScript export reads
    every ``x.shape[2]`` through ``Shape -> Gather`` even where that dimension is static.  Frozen at
    batch 1 without folding, each ``Slice`` bound stayed computed and its ``Slice`` ran on the CPU
    ("Slice parameter ... must be a constant") where check and quantize's report placed it on the
    accelerator (an involution's shifted 3x3 copies: 3 accelerator subgraphs checked, 5 compiled)."""
    if not any(n.op_type in SHAPE_OPS for n in model.graph.node):
        return model
    return infer_static_shapes(fold_static_shapes(model))


def _live(groups: list[list[Unit]], g: QGraph) -> list[list[Unit]]:
    """``groups`` without those whose outputs nothing reads (repeated: dropping one can leave its
    producer's boundary tensor unread).

    Why: a dynamic-batch net's ``Shape -> Gather -> Concat`` that feeds a ``Reshape`` lowered with
    its static shape is left with no reader; as a CPU subgraph of no outputs ONNX Runtime refused
    every run ("At least one output should be requested"), so a model that compiled did not run."""
    while True:
        kept = [units for (_, outs), units in zip(_boundaries(groups, g), groups) if outs]
        if len(kept) == len(groups):
            return groups
        groups = kept


def _cpu_model(g: QGraph, units: list[Unit], ins: list[str], outs: list[str]) -> bytes:
    """A CPU or plugin part as ONNX (:func:`npuflow.graph.slice_nodes`), between the partition's
    boundaries; the model's metadata is in the manifest once, not in every part."""
    m = slice_nodes(g, [u.node for u in units], inputs=ins, outputs=outs, name=f"{g.graph.name}_cpu")
    del m.metadata_props[:]
    return m.SerializeToString(deterministic=True)


def _describe(g, model, tgt, groups, notes, build_config, preprocessing, plugs=None) -> tuple[dict, dict]:
    blobs: dict[str, np.ndarray | bytes] = {}
    subgraphs = []
    tensors: dict[str, dict] = {}
    peak = 0
    total_weights = 0
    for k, ((ins, outs), units) in enumerate(zip(_boundaries(groups, g), groups)):
        device = units[0].device
        entry: dict = {"id": k, "name": f"subgraph_{k}_{plugin_name(device) if is_plugin(device) else device.lower()}",
                       "inputs": ins, "outputs": outs}
        for t in ins + outs:
            tensors[t] = _tensor_info(g, t)
        if device == Device.NPU:
            op_json = []
            for j, u in enumerate(units):
                op = u.op
                names = {}
                for role, arr in op.blobs.items():
                    bname = f"sg{k}.op{j}.{role}"
                    blobs[bname] = np.ascontiguousarray(arr)
                    names[role] = bname
                op_json.append(op.to_json(names))
                for t in op.outputs:
                    tensors.setdefault(t, _tensor_info(g, t))
            plan = memory.plan(op_json, tensors, set(ins) | set(outs))
            weight_bytes = int(sum(u.op.weight_bytes for u in units))
            entry.update({
                "device": tgt.device_label, "engine": "integer", "ops": op_json,
                "op_counts": dict(sorted(Counter(u.op.kind for u in units).items())),
                "macs": int(sum(u.op.macs for u in units)), "weight_bytes": weight_bytes, "memory": plan,
            })
            peak = max(peak, plan["arena_bytes"] + sum(_nbytes(tensors[t]) for t in ins + outs))
            total_weights += weight_bytes
        elif is_plugin(device):
            plugin = plugs[plugin_name(device)]
            bname = f"sg{k}.onnx"
            blobs[bname] = _cpu_model(g, units, ins, outs)
            payload = plugin_registry.call(plugin, "compile", plugin.compile, onnx.load_from_string(blobs[bname]))
            if not isinstance(payload, (bytes, bytearray)):
                raise NpuflowError("NPF_PLUGIN_FAILED", plugin=plugin.name, step="compile",
                                   reason=f"returned {type(payload).__name__}, not bytes")
            weight_bytes = int(sum(g.const(i).nbytes for u in units for i in node_reads(u.node) if i in g.inits))
            entry.update({
                "device": plugin.device, "engine": "plugin", "plugin": plugin.name, "onnx": bname,
                "nodes": [u.node.name for u in units],
                "op_counts": dict(sorted(Counter(u.node.op_type for u in units).items())),
                "macs": 0, "weight_bytes": weight_bytes,
            })
            if payload:
                blobs[f"sg{k}.payload"] = np.frombuffer(bytes(payload), np.uint8)
                entry["payload"] = f"sg{k}.payload"
            total_weights += weight_bytes
        else:
            bname = f"sg{k}.onnx"
            blobs[bname] = _cpu_model(g, units, ins, outs)
            weight_bytes = int(sum(g.const(i).nbytes for u in units for i in node_reads(u.node) if i in g.inits))
            entry.update({
                "device": Device.CPU, "engine": "onnx", "onnx": bname, "nodes": [u.node.name for u in units],
                "op_counts": dict(sorted(Counter(u.node.op_type for u in units).items())),
                "macs": 0, "weight_bytes": weight_bytes,
            })
            total_weights += weight_bytes
        subgraphs.append(entry)
    # an input no node reads (ONNX Runtime still asks for it) is no subgraph's boundary
    for name in g.graph_inputs:
        tensors.setdefault(name, _tensor_info(g, name))
    inputs = [_io(g, name, (preprocessing or {}).get(name)) for name in g.graph_inputs]
    outputs = [_io(g, name) for name in g.graph_outputs]
    manifest = {
        "format": "npuf",
        "npuflow_version": __version__,
        "model": {"name": model.graph.name, "producer": model.producer_name,
                  "metadata": {p.key: p.value for p in model.metadata_props},
                  # what onnxruntime's get_modelmeta shows (npuflow.ort.InferenceSession serves it too)
                  "version": model.model_version, "domain": model.domain, "description": model.doc_string,
                  "graph_description": model.graph.doc_string},
        "target": {"name": tgt.name, "fingerprint": tgt.fingerprint, "family": tgt.family, "kind": tgt.kind,
                   "device_label": tgt.device_label, "scale_type": tgt.numerics.scale_type,
                   # a user's own target file: perf and bench cannot find it by name later
                   **({} if tgt in list_targets() else {"spec": tgt.model_dump(mode="json")})},
        "inputs": inputs,
        "outputs": outputs,
        "subgraphs": subgraphs,
        "tensors": {k: tensors[k] for k in sorted(tensors)},
        "memory": {"weight_bytes": int(total_weights), "peak_activation_bytes": int(peak)},
        "build_config": _jsonable(build_config),
        "preprocessing": _jsonable(preprocessing),
        "notes": notes,
    }
    return manifest, blobs


def _jsonable(value):
    """Stored configuration as plain JSON (numpy scalars/arrays, tuples and paths converted)."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(value, default=default, sort_keys=True)) if value is not None else None


def _nbytes(info: dict) -> int:
    return int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize


def _layout(g: QGraph, name: str) -> str:
    """``NHWC`` for a 4-D input the model itself transposes to channels first (an image fed as
    height x width x channels, ``Cast``/quantize steps before the ``Transpose(perm=0,3,1,2)``
    allowed), else ``NCHW``; `info` called such an input NCHW."""
    def reader(t: str) -> tuple[onnx.NodeProto, str] | None:
        readers = g.consumer_nodes(t)
        return (readers[0], readers[0].output[0]) if len(readers) == 1 and len(readers[0].output) == 1 else None
    return _transposed_to(g, name, reader, [0, 3, 1, 2])


def _output_layout(g: QGraph, name: str) -> str:
    """``NHWC`` for a 4-D output the model itself transposes to channels last (``Transpose(perm=0,2,3,1)``,
    dequantize/``Cast`` steps after it allowed: TF-style heads, a segmentation map handed to image code),
    else ``NCHW``; `info` called such an output NCHW, its channels the width."""
    def writer(t: str) -> tuple[onnx.NodeProto, str] | None:
        node = g.producer_node(t)
        return (node, node.input[0]) if node is not None and node.input else None
    return _transposed_to(g, name, writer, [0, 2, 3, 1])


def _transposed_to(g: QGraph, name: str, step: Callable[[str], tuple[onnx.NodeProto, str] | None],
                   nhwc_perm: list[int]) -> str:
    """``NHWC`` where walking from ``name`` by ``step`` (the next node and the tensor after it) through at
    most three ``Cast``/quantize/dequantize steps reaches a ``Transpose`` of ``nhwc_perm``, else ``NCHW``."""
    seen = name
    for _ in range(4):
        found = step(seen)
        if found is None:
            return "NCHW"
        node, seen = found
        if node.op_type == "Transpose":
            return "NHWC" if list(attr(node, "perm") or []) == nhwc_perm else "NCHW"
        if node.op_type != "Cast" and g.quantize_mode(node) is None and not g.is_dequantize(node):
            return "NCHW"
    return "NCHW"


def _io(g: QGraph, name: str, preprocessing: dict | None = None) -> dict:
    """A model input's or output's entry; a 4-D tensor is NCHW unless the build's preprocessing
    says the device feeds it in another layout (``input_layout_rt: NHWC``: `info` said NCHW) or
    the model transposes the input to channels first itself (:func:`_layout`).  A graph input's
    ``clipped_by``: the quantize steps it reaches through ops that keep its values
    (:func:`.input_steps.clipping_steps`), which the run-time coverage count reads."""
    info = _tensor_info(g, name)
    info["name"] = name
    layout = (preprocessing or {}).get("layout_rt") or (_layout(g, name) if name in g.graph_inputs else _output_layout(g, name))
    info["layout"] = layout if len(info["shape"]) == 4 else ""
    if "quant" not in info:
        q = next((c for c in g.consumer_nodes(name) if g.quantize_mode(c) is not None), None)
        p = g.quantize_params(q) if q is not None else None
        src = g.producer_node(name)
        if p is None and src is not None and g.is_dequantize(src):
            p = g.dequantize_params(src)
        if p is not None:
            info["quant"] = p.to_json()
    if name in g.graph_inputs and (steps := [s for s in clipping_steps(g, name) if s["quant"] != info.get("quant")]):
        info["clipped_by"] = steps  # only the steps that clip elsewhere than its own: most files keep format 1.0
    return info
