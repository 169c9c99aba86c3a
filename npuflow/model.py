"""Loading and normalising ONNX models: the first stage every command shares.

What comes out of :func:`load` is an ``onnx.ModelProto`` that later stages can rely on:

* weights are initializers (PP-OCR's exporter stores them as ``Constant`` nodes);
* the default-domain opset is at least :data:`WORKING_OPSET` (per-channel QDQ needs 13);
* graph inputs have the static shapes the user asked for (``--input-shape``), a dynamic batch
  dimension defaults to 1, and any other unresolved dimension is a coded error;
* every tensor has a static shape in ``value_info`` (ONNX shape inference, completed by one
  ONNX Runtime pass when symbolic shape arithmetic defeats it, as with ``Shape``/``Slice``).

Graph surgery uses ``onnx_ir``; the ModelProto is the hand-over format between stages because
ONNX Runtime consumes it directly.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import version_converter
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from .errors import NpuflowError

log = logging.getLogger(__name__)

#: Oldest and newest default-domain opset accepted on input.
SUPPORTED_OPSETS = (11, 21)
#: Models below this opset are upgraded to it (per-channel Q/DQ needs 13).
WORKING_OPSET = 13
#: Highest IR version the bundled ONNX Runtime reads; saved models are clamped to it.
MAX_IR_VERSION = 10

ModelLike = str | os.PathLike | onnx.ModelProto
InputShapes = Mapping[str, Sequence[int]]


def parse_shape(text: str) -> list[int]:
    """``"1x3x224x224"`` -> ``[1, 3, 224, 224]``; commas are accepted too."""
    parts = [p for p in re.split(r"[x,×]", text.strip().lower()) if p != ""]
    if not parts or not all(p.isdigit() for p in parts) or any(int(p) <= 0 for p in parts):
        raise NpuflowError(
            "NPF_MODEL_BAD_INPUT_SHAPE", value=text,
            reason="expected positive integers joined by 'x'",
        )
    return [int(p) for p in parts]


def parse_input_shapes(pairs: Sequence[tuple[str, str]] | None) -> dict[str, list[int]]:
    """CLI ``--input-shape NAME DIMS`` pairs -> ``{name: dims}``."""
    return {name: parse_shape(dims) for name, dims in (pairs or [])}


def read_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with coded errors for the usual ways a file can be wrong."""
    p = Path(path)
    if not p.is_file():
        raise NpuflowError("NPF_MODEL_NOT_FOUND", path=str(p))
    data = p.read_bytes()
    if not data:
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path=str(p), reason="the file is empty")
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
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        onnx.load_external_data_for_model(proto, str(p.parent))
    return proto


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
) -> onnx.ModelProto:
    """Load and normalise a model (see the module docstring for what is guaranteed)."""
    proto = read_proto(model) if not isinstance(model, onnx.ModelProto) else _copy(model)
    proto = _upgrade_opset(proto)
    proto = _lift_constants(proto)
    _freeze_input_shapes(proto, dict(input_shapes or {}))
    if infer_shapes:
        proto = infer_static_shapes(proto)
    return proto


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _upgrade_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    opset = default_opset(proto)
    low, high = SUPPORTED_OPSETS
    if not low <= opset <= high:
        raise NpuflowError("NPF_MODEL_OPSET_UNSUPPORTED", opset=opset, low=low, high=high)
    if opset >= WORKING_OPSET:
        return proto
    log.info("upgrading opset %d -> %d", opset, WORKING_OPSET)
    try:
        upgraded = version_converter.convert_version(proto, WORKING_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors on unconvertible ops
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"opset upgrade failed: {exc}") from None
    # the converter keeps the old IR version even where the new opset needs a newer one
    upgraded.ir_version = max(upgraded.ir_version, 7)
    return upgraded


def _lift_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes -> initializers, so weights look the same whatever the exporter."""
    if not any(n.op_type == "Constant" for n in proto.graph.node):
        return proto
    model = ir.serde.deserialize_model(proto)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    out = ir.serde.serialize_model(model)
    return out


def _freeze_input_shapes(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    for name in shapes:
        if name not in names:
            raise NpuflowError("NPF_MODEL_UNKNOWN_INPUT", name=name, inputs=", ".join(names))
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in shapes:
            wanted = shapes[inp.name]
            if dims and len(dims) != len(wanted):
                raise NpuflowError(
                    "NPF_MODEL_BAD_INPUT_SHAPE", value="x".join(map(str, wanted)),
                    reason=f"input {inp.name!r} has rank {len(dims)}, the shape given has rank {len(wanted)}",
                )
            del inp.type.tensor_type.shape.dim[:]
            for d in wanted:
                inp.type.tensor_type.shape.dim.add().dim_value = d
            continue
        unresolved = [i for i, d in enumerate(dims) if d.dim_value <= 0]
        if unresolved == [0] and len(dims) > 1:
            dims[0].Clear()
            dims[0].dim_value = 1  # a dynamic batch is compiled for batch 1, as hb_mapper does
            unresolved = []
        if unresolved:
            example = "x".join(str(d.dim_value) if d.dim_value > 0 else "N" for d in dims)
            raise NpuflowError(
                "NPF_MODEL_DYNAMIC_SHAPE", input=inp.name,
                dims=", ".join(f"#{i} ({dims[i].dim_param or '?'})" for i in unresolved),
                example=example.replace("N", "1", 1) if dims[0].dim_value <= 0 else example,
            )


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _shape_of(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return dims if all(d >= 0 for d in dims) else None


def tensor_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor name with a fully static shape -> that shape (initializers included)."""
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in proto.graph.initializer}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        s = _shape_of(vi)
        if s is not None:
            shapes[vi.name] = s
    return shapes


def tensor_elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Every typed tensor name -> ``onnx.TensorProto`` element type."""
    types = {t.name: t.data_type for t in proto.graph.initializer}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def infer_static_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Static shapes for every node output.

    ONNX shape inference with data propagation first; when some outputs stay unknown (shape
    arithmetic through ``Shape``/``Gather``/``Slice`` the inference cannot follow), one ONNX
    Runtime run on zeros records the real shapes.  Inputs must be static by now.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError/RuntimeError subclasses
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"shape inference failed: {exc}") from None
    known = _value_info_shapes(inferred)
    missing = [o for n in inferred.graph.node for o in n.output if o and o not in known]
    if missing:
        _fill_shapes_by_running(inferred, missing)
        known = _value_info_shapes(inferred)
    for out in inferred.graph.output:  # exporters leave stale -1/symbolic dims on outputs
        if _shape_of(out) is None and out.name in known:
            _set_shape(out, known[out.name])
    return inferred


def _value_info_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        s = _shape_of(vi)
        if s is not None:
            shapes[vi.name] = s
    return shapes


def _set_shape(vi: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    vi.type.tensor_type.ClearField("shape")
    vi.type.tensor_type.shape.SetInParent()
    for d in dims:
        vi.type.tensor_type.shape.dim.add().dim_value = int(d)


def _fill_shapes_by_running(proto: onnx.ModelProto, names: list[str]) -> None:
    import onnxruntime as ort

    probe = _copy(proto)
    probe.ir_version = min(probe.ir_version, MAX_IR_VERSION)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.add().name = name
    feeds = {}
    elem_types = tensor_elem_types(proto)
    for inp in graph_inputs(proto):
        shape = _shape_of(inp) or []
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_types.get(inp.name, onnx.TensorProto.FLOAT))
        feeds[inp.name] = np.zeros(shape, dtype=dtype)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = sess.run(names, feeds)
    except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"ONNX Runtime cannot run the model: {exc}") from None
    by_name = {vi.name: vi for vi in proto.graph.value_info}
    for name, value in zip(names, outs):
        arr = np.asarray(value)
        vi = by_name.get(name)
        if vi is None:
            vi = proto.graph.value_info.add()
            vi.name = name
        vi.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        _set_shape(vi, arr.shape)


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
    """Write bytes/text to ``path`` through a temporary file in the same folder and a rename."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, target)
    except OSError as exc:
        raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(target), reason=exc.strerror or str(exc)) from None
    return target
