"""Reading and writing the tensor types an ONNX graph declares (inputs, ``value_info``, outputs).

The small vocabulary every stage uses to ask "what shape/type does this tensor have" of a
``ModelProto`` or ``GraphProto``, kept apart from loading (:mod:`npuflow.model`) and the shape probe
(:mod:`npuflow.shape_probe`) so that both can use it without importing each other.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import onnx


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def numpy_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    """``vi``'s element type as a numpy dtype (float32 when it declares none)."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT))


def static_shape(vi: onnx.ValueInfoProto) -> list[int] | None:
    """``vi``'s dimensions when every one is a known size, else None."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return dims if all(d >= 0 for d in dims) else None


def tensor_shapes(proto: onnx.ModelProto | onnx.GraphProto) -> dict[str, list[int]]:
    """Every tensor name with a fully static shape -> that shape (initializers included)."""
    graph = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    return {**{t.name: list(t.dims) for t in graph.initializer}, **value_info_shapes(graph)}


def tensor_elem_types(proto: onnx.ModelProto | onnx.GraphProto) -> dict[str, int]:
    """Every typed tensor name -> ``onnx.TensorProto`` element type."""
    graph = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    types = {t.name: t.data_type for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def inferred_dims(model: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """Each tensor's dimensions as ONNX shape inference with data propagation finds them: a size,
    a symbolic name (equal names, equal sizes), or ``None`` (unknown); tensors whose rank is
    unknown are absent; initializers included.  A graph with a dynamic batch computes its
    broadcast shapes from ``Shape`` at run time, and only propagation names their sizes.  A model
    ONNX cannot infer (or over 2 GB) gives what it declares."""
    try:
        graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except (ValueError, onnx.shape_inference.InferenceError):
        graph = model.graph
    found: dict[str, tuple[int | str | None, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            found[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                   for d in vi.type.tensor_type.shape.dim)
    return found


def named_dims(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """:func:`inferred_dims` of the tensors whose every dimension is a size or a symbolic name (none
    unknown): what passes that compare shapes ask (equal names, equal sizes)."""
    return {name: dims for name, dims in inferred_dims(model).items() if all(d is not None for d in dims)}


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """:func:`inferred_dims` of the tensors whose every dimension is a size: their static shapes."""
    return {name: list(dims) for name, dims in inferred_dims(model).items() if all(isinstance(d, int) for d in dims)}


def value_info_shapes(proto: onnx.ModelProto | onnx.GraphProto) -> dict[str, list[int]]:
    """Declared static shapes of inputs, ``value_info`` and outputs (initializers not included)."""
    graph = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    shapes = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        s = static_shape(vi)
        if s is not None:
            shapes[vi.name] = s
    return shapes


def set_static_shape(vi: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    """Replace ``vi``'s shape by the static ``dims`` (symbolic or unknown dimensions dropped)."""
    vi.type.tensor_type.ClearField("shape")
    vi.type.tensor_type.shape.SetInParent()
    for d in dims:
        vi.type.tensor_type.shape.dim.add().dim_value = int(d)


def with_outputs(proto: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs the tensors ``names`` (untyped: ONNX Runtime infers
    them), for runs that read intermediate values (calibration, the shape probe)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    existing = {o.name for o in out.graph.output}
    for name in names:
        if name not in existing:
            out.graph.output.add().name = name
            existing.add(name)
    return out
