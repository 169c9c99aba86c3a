"""The shape probe: one ONNX Runtime run that gives the shapes ONNX shape inference leaves unknown.

Shape inference cannot follow every model (shape arithmetic it does not propagate, an ``If``
whose branches differ), so :func:`npuflow.model.infer_static_shapes` runs the model once and
records the shapes of what it missed.  The run needs input values that are valid for the model,
not only of the right shape: an integer input the model branches on (silero-vad's sample rate)
must select a branch that fits the frozen shapes.  :func:`probe_feeds` says what is fed and why;
values a user gives (``--probe-value``) are stored in the model's metadata so every later stage
probes a derived model the same way.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
import onnx
from numpy.typing import ArrayLike

from .errors import NpuflowError
from .ort_session import open_session
from .value_info import graph_inputs, numpy_dtype, set_static_shape, static_shape, with_outputs

ProbeValues = Mapping[str, ArrayLike]

#: ``metadata_props`` key holding the probe values given to :func:`npuflow.model.load`, so that every
#: later stage working on a model derived from this one (optimised, quantized) probes it the same way.
PROBE_VALUES_KEY = "npuflow.probe_values"


def set_probe_values(proto: onnx.ModelProto, values: ProbeValues) -> None:
    """Store the shape probe's values for ``proto``'s inputs in its metadata (they travel with
    the model through optimisation, quantization and compilation)."""
    names = [i.name for i in graph_inputs(proto)]
    for name in values:
        if name not in names:
            raise NpuflowError("NPF_MODEL_UNKNOWN_INPUT", name=name, inputs=", ".join(names))
    stored = {**_stored_probe_values(proto), **{k: np.asarray(v).tolist() for k, v in values.items()}}
    props = [p for p in proto.metadata_props if p.key != PROBE_VALUES_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    proto.metadata_props.add(key=PROBE_VALUES_KEY, value=json.dumps(stored, sort_keys=True))


def _stored_probe_values(proto: onnx.ModelProto) -> dict:
    for p in proto.metadata_props:
        if p.key == PROBE_VALUES_KEY:
            return json.loads(p.value)
    return {}


def probe_feeds(proto: onnx.ModelProto) -> dict[str, object]:
    """What the shape probe feeds each input, and why that value is valid for it.

    A given value (stored by :func:`set_probe_values`) first.  An integer or boolean input the
    model tests for equality with a constant gets that constant: such inputs select a branch
    (silero-vad's sample rate: ``sr == 16000``), and zero may select one that does not fit the
    frozen shapes.  Other tensors get zeros of their shape; a sequence gets one zero element, an
    optional input its element when that has a static shape.
    """
    given = _stored_probe_values(proto)
    compared = _compared_constants(proto)
    feeds: dict[str, object] = {}
    for inp in graph_inputs(proto):
        kind = inp.type.WhichOneof("value")
        if kind == "tensor_type":
            dtype = numpy_dtype(inp)
            shape = static_shape(inp) or []
            if inp.name in given:
                feeds[inp.name] = given_value(inp.name, given[inp.name], dtype, shape)
            elif inp.name in compared and np.dtype(dtype).kind in "iub":
                feeds[inp.name] = np.full(shape, compared[inp.name], dtype=dtype)
            else:
                feeds[inp.name] = np.zeros(shape, dtype=dtype)
        elif kind == "sequence_type":
            elem = _element(inp.type.sequence_type.elem_type)
            feeds[inp.name] = [elem] if elem is not None else []
        elif kind == "optional_type":
            elem = _element(inp.type.optional_type.elem_type)
            if elem is not None:
                feeds[inp.name] = elem
    return feeds


def given_value(name: str, value: object, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    """A given probe value as the input's dtype and shape (a scalar fills the whole tensor)."""
    arr = np.asarray(value, dtype=dtype)
    try:
        return np.broadcast_to(arr, shape).copy()
    except ValueError:
        raise NpuflowError(
            "NPF_MODEL_BAD_PROBE_VALUE", option="value for", value=f"{name}={arr.tolist()}",
            reason=f"input {name!r} has shape {shape}; give one number or {int(np.prod(shape))} numbers",
        ) from None


def _element(t: onnx.TypeProto) -> np.ndarray | None:
    """Zeros of a sequence/optional element type, when that is a tensor with a static shape."""
    if t.WhichOneof("value") != "tensor_type" or not t.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.tensor_type.shape.dim]
    if any(d < 0 for d in dims):
        return None
    return np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type))


def _compared_constants(proto: onnx.ModelProto) -> dict[str, float]:
    """Graph input -> the scalar constant the model first tests it for equality with (``Equal(sr, 16000)``)."""
    inputs = {i.name for i in graph_inputs(proto)}
    consts = {t.name: t for t in proto.graph.initializer}
    found: dict[str, float] = {}
    for node in proto.graph.node:
        if node.op_type != "Equal" or len(node.input) != 2:
            continue
        for a, b in (node.input, reversed(node.input)):
            if a in inputs and a not in found and b in consts:
                value = onnx.numpy_helper.to_array(consts[b])
                if value.size == 1:
                    found[a] = value.item()
    return found


def fill_shapes_by_running(proto: onnx.ModelProto, names: list[str]) -> None:
    """Run ``proto`` once on :func:`probe_feeds` and record the shapes and types of ``names`` in its
    ``value_info`` (a sequence or absent optional output has none and is left as it is)."""
    feeds = probe_feeds(proto)
    sess = open_session(with_outputs(proto, names), level="disable")
    try:
        outs = sess.run(names, feeds)
    except NpuflowError:  # a custom op's own failure (npuflow.custom_ops)
        raise
    except Exception as exc:  # a run failure is about the probe's values, not the model
        raise _probe_error(proto, feeds, names, exc) from None
    by_name = {vi.name: vi for vi in proto.graph.value_info}
    for name, value in zip(names, outs):
        if not isinstance(value, np.ndarray):
            continue  # a sequence or an absent optional: no static shape to record
        vi = by_name.get(name)
        if vi is None:
            vi = proto.graph.value_info.add()
            vi.name = name
        vi.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        set_static_shape(vi, value.shape)


def _probe_error(proto: onnx.ModelProto, feeds: dict[str, object], names: list[str], exc: Exception) -> NpuflowError:
    """The coded error of a failed probe run, naming the input whose value most likely chose wrong
    (an integer or boolean one: those select branches and index tables; else the first input)."""
    def describe(value: object) -> str:
        if isinstance(value, np.ndarray):
            if value.size == 1:
                return repr(value.item())
            return f"{'zeros' if not value.any() else 'values'} {'x'.join(map(str, value.shape))}"
        return "a one-element sequence" if value else "an empty sequence"

    suspects = [k for k, v in feeds.items() if isinstance(v, np.ndarray) and v.dtype.kind in "iub"] or list(feeds)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return NpuflowError(
        "NPF_MODEL_SHAPE_PROBE_FAILED", count=len(names), first=names[0],
        feeds=", ".join(f"{k}={describe(v)}" for k, v in feeds.items()), reason=reason[:600],
        input=suspects[0] if suspects else "INPUT",
    )
