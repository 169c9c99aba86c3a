"""Graph input shapes: freezing the ones asked (``--input-shape``) and naming the dynamic ones.

Split from :mod:`npuflow.model` (which re-exports these names) to keep it readable; the loader
calls :func:`freeze_input_shapes` once per model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx

from .errors import NpuflowError
from .value_info import graph_inputs


def freeze_input_shapes(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[dict[str, str]]:
    """Set the asked input shapes (a dynamic batch left open: 1); returns the fixed dimensions they
    change, which :func:`npuflow.model.load` checks still fit the model's shapes."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    changed: list[dict[str, str]] = []
    for name in shapes:
        if name not in names:
            raise NpuflowError("NPF_MODEL_UNKNOWN_INPUT", name=name, inputs=", ".join(names))
    for inp in inputs:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        wanted = shapes[inp.name]
        if dims and len(dims) != len(wanted):
            raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value="x".join(map(str, wanted)),
                               reason=f"input {inp.name!r} has rank {len(dims)}, the shape given has rank {len(wanted)}")
        changed += _fixed_change(inp, wanted)
        del inp.type.tensor_type.shape.dim[:]
        for d in wanted:
            inp.type.tensor_type.shape.dim.add().dim_value = d
    open_dims = dynamic_dims(proto)
    for inp in inputs:
        if open_dims.get(inp.name) == [0] and len(inp.type.tensor_type.shape.dim) > 1:
            dims = inp.type.tensor_type.shape.dim
            dims[0].Clear()
            dims[0].dim_value = 1  # a dynamic batch is compiled for batch 1, as hb_mapper does
            del open_dims[inp.name]
    if open_dims:
        raise unresolved_error(proto, open_dims)
    return changed


def _fixed_change(inp: onnx.ValueInfoProto, wanted: Sequence[int]) -> list[dict[str, str]]:
    """The fields of ``NPF_MODEL_FIXED_INPUT_SHAPE`` when ``wanted`` changes a dimension ``inp`` fixes."""
    fixed = [d.dim_value if d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
    at = [f"#{k}" for k, (have, want) in enumerate(zip(fixed, wanted)) if have not in (None, want)]
    return [dict(name=inp.name, fixed="x".join("?" if d is None else str(d) for d in fixed),
                 asked="x".join(map(str, wanted)), at=", ".join(at))] if at else []


def dynamic_dims(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """``{input: [indices of its dimensions without a positive static size]}`` for every real
    input that has any (a dynamic batch included): what ``--input-shape`` or calibration samples
    must resolve."""
    out = {}
    for inp in graph_inputs(proto):
        open_at = [k for k, d in enumerate(inp.type.tensor_type.shape.dim) if d.dim_value <= 0]
        if open_at:
            out[inp.name] = open_at
    return out


def unresolved_error(proto: onnx.ModelProto, open_dims: Mapping[str, Sequence[int]]) -> NpuflowError:
    """One ``NPF_MODEL_DYNAMIC_SHAPE`` naming every input in ``open_dims`` with its unresolved
    dimensions, and an ``--input-shape`` example per input, so one run shows all that is missing."""
    inputs = {i.name: i for i in graph_inputs(proto)}
    described, examples = [], []
    for name, at in open_dims.items():
        dims = inputs[name].type.tensor_type.shape.dim
        described.append(f"{name!r} dimension(s) " + ", ".join(f"#{k} ({dims[k].dim_param or '?'})" for k in at))
        example = ["1" if k == 0 and k in at else "N" if k in at else str(d.dim_value) for k, d in enumerate(dims)]
        examples.append(f"--input-shape {name} {'x'.join(example)}")
    return NpuflowError("NPF_MODEL_DYNAMIC_SHAPE", count=len(open_dims), inputs="; ".join(described),
                        examples=" ".join(examples))
