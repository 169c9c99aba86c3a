"""Reading and writing the tensor types an ONNX graph declares (inputs, ``value_info``, outputs).

The small vocabulary every stage uses to ask "what shape/type does this tensor have" of a
``ModelProto`` or ``GraphProto``, kept apart from loading (:mod:`npuflow.model`) and the shape probe
(:mod:`npuflow.shape_probe`) so that both can use it without importing each other.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import onnx

log = logging.getLogger(__name__)


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


def ranked_dims(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """:func:`named_dims`, and where ONNX finds no rank, the dimensions ONNX Runtime's symbolic shape
    inference (``onnxruntime.tools.symbolic_shape_infer``) computes: a size, or a symbolic
    expression of the input dimensions (a name as :func:`named_dims` gives; equal text, equal size).

    Why: ONNX's ``Reshape`` before opset 14 infers no output shape when its target is computed at
    run time, though the target's length (the output rank) is static.  paddle2onnx writes
    ``flatten`` so (``Shape -> Slice -> Concat([.., -1]) -> Reshape``): PP-OCRv4 rec loaded with its
    dynamic batch and width (opset 13) has no rank for any tensor of its SVTR neck, and a pass that
    needs one (a LayerNorm's normalised axes) would treat the dynamic load apart from the fixed one.
    ORT's inference evaluates such shape computations symbolically.  It runs without ``auto_merge``,
    which would take two symbols a broadcast meets as equal (wrong where one is 1 at run time): it
    then stops at the first node it cannot prove a shape for, and the dimensions it found before that
    are kept (ONNX's own always win).  It costs about a second on rec, so only passes that miss a rank
    ask for it; a model it cannot read (an unknown domain, an ONNX Runtime without its private
    ``_infer_impl``) gives :func:`named_dims` alone."""
    found = named_dims(model)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # infer_shapes() raises on a partial result and then saves the model into the working directory:
        # the loop it runs, without either
        inference = SymbolicShapeInference(2**31 - 1, False, False, 0)
        inference._preprocess(model)
        while inference.run_ and not inference._infer_impl():
            pass
        graph = inference.out_mp_.graph
    except Exception as exc:  # its asserts and KeyErrors on graphs it does not know: ONNX's dims alone
        log.info("symbolic shape inference gave no dimensions: %s: %s", type(exc).__name__, exc)
        return found
    for vi in [*graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if vi.name in found or not t.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim)
        if all(d is not None for d in dims):
            found[vi.name] = dims
    return found


def dims_of(model: onnx.ModelProto, tensors: Iterable[str]) -> dict[str, tuple[int | str | None, ...]]:
    """:func:`inferred_dims`, completed by :func:`ranked_dims` where one of ``tensors`` (those a pass
    decides on) has no rank or an unknown size there.

    Why: a TorchScript export with a dynamic batch computes a view's target from ``Shape`` at run
    time through ``Div`` and ``Cast``, which ONNX's data propagation does not follow (ResNeSt's
    ``x.view(b, r, c // r, h, w)``): ONNX gives the view no shape, and a float pass that needs its
    rank or an axis's size skipped it in the dynamic graph quantize optimises, yet rewrote it in the
    graph frozen at one shape that check reads (check 3 subgraphs, compile 13).  ORT's symbolic
    inference proves those sizes with the batch left a symbol: sizes that hold at every batch.  It
    costs about a second on a large model, so only a pass with such a tensor asks for it."""
    dims = inferred_dims(model)
    if all(t in dims and None not in dims[t] for t in tensors):
        return dims
    return {**dims, **ranked_dims(model)}


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
