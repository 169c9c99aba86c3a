"""Validation of a ``.npuf`` manifest beyond its types: :func:`validate` parses it with the
models of :mod:`.manifest_schema`, then checks what one field cannot say alone — the
variants and packed models, every subgraph's tensors and blobs, the embedded ONNX interfaces, the
memory plan, the target's limits and each integer op's shapes, ranges and epilogue
(:class:`OpCheck`).  Split from the models so each reads on its own.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np
import onnx
from onnx import helper
from pydantic import ValidationError

from ..errors import NpuflowError
from ..model_checks import max_tensor_elements
from ..numerics import qrange
from ..targets import bundled_fingerprint, load_target, same_fingerprint
from . import memory
from .manifest_pieces import pieces
from .manifest_schema import (ARENA_BYTES_PER_ELEMENT, ATTRS, CODE_DTYPES, MAX_LEFT_SHIFT, MAX_SHIFT, ArrayRef, Blob,
                              IntegerSubgraph, Manifest, OnnxSubgraph, Op, PackedManifest, PluginSubgraph, SchemaError,
                              Strict, Tensor)


def validate(manifest: object, blob_bytes: Callable[[str], bytes], *, newer_minor: bool = False) -> Manifest:
    """Validate a manifest (see the module docstring); raises :class:`SchemaError`.

    ``blob_bytes(name)`` returns a blob's bytes (the embedded ONNX models are parsed to compare
    their interface with the subgraph's); ``newer_minor`` ignores unknown fields.
    """
    context = {"ignore_unknown": newer_minor}
    if isinstance(manifest, dict) and "packed" in manifest:
        return _validate_packed(manifest, blob_bytes, newer_minor)
    m = pieces(manifest, context)  # no tree of the whole manifest (:mod:`.manifest_pieces`)
    if m is None:  # a piece refused: the whole manifest's validation names the first error, as it always did
        try:
            m = Manifest.model_validate(manifest, context=context)
        except ValidationError as exc:
            raise _schema_error(exc, "") from None
    for k in range(len(m.variants or [])):
        _check_variant(m, manifest, k, blob_bytes, newer_minor)
    _check_program(m, context, blob_bytes)
    return m


def _validate_packed(manifest: dict, blob_bytes: Callable[[str], bytes], newer_minor: bool) -> PackedManifest:
    """Each packed model is a whole manifest over the shared blob table; names are unique and
    every model is for the first one's target."""
    try:
        packed = PackedManifest.model_validate(manifest, context={"ignore_unknown": newer_minor})
    except ValidationError as exc:
        raise _schema_error(exc, "") from None
    first = None
    for k, entry in enumerate(packed.packed):
        where = f"packed[{k}]"
        if "packed" in entry.manifest:
            raise SchemaError(f"{where}.manifest", "a packed model is itself a packed file")
        try:
            m = validate({**entry.manifest, "blobs": manifest["blobs"]}, blob_bytes, newer_minor=newer_minor)
        except SchemaError as exc:
            raise SchemaError(f"{where}.manifest.{exc.field}", exc.reason) from None
        if [e.name for e in packed.packed].index(entry.name) != k:
            raise SchemaError(f"{where}.name", f"{entry.name!r} names an earlier model too")
        first = first or m.target
        if not same_fingerprint(m.target.fingerprint, first.fingerprint):
            raise SchemaError(f"{where}.manifest.target",
                              f"{m.target.name} is not the first model's target {first.name}")
    return packed


def _check_variant(m: Manifest, manifest: dict, k: int, blob_bytes: Callable[[str], bytes], newer_minor: bool) -> None:
    """A variant is a whole program over the shared blob table, with the first program's input and
    output names, dtypes and ranks, and shapes of its own."""
    where = f"variants[{k}]"
    base = {key: value for key, value in manifest.items() if key != "variants"}
    try:
        v = validate({**base, **manifest["variants"][k]}, blob_bytes, newer_minor=newer_minor)
    except SchemaError as exc:
        raise SchemaError(f"{where}.{exc.field}", exc.reason) from None
    for label, mine, first in (("inputs", v.inputs, m.inputs), ("outputs", v.outputs, m.outputs)):
        if [(t.name, t.dtype, len(t.shape)) for t in mine] != [(t.name, t.dtype, len(t.shape)) for t in first]:
            raise SchemaError(f"{where}.{label}", "names, dtypes or ranks differ from the first program's")
    shapes = [[t.shape for t in m.inputs]] + [[t.shape for t in w.inputs] for w in (m.variants or [])[:k]]
    if [t.shape for t in v.inputs] in shapes:
        raise SchemaError(f"{where}.inputs", "the same input shapes as an earlier program")


def _check_program(m: Manifest, context: dict, blob_bytes: Callable[[str], bytes]) -> None:
    """One program: its subgraphs, their references and derived facts, and its interface."""
    _check_limits(m)
    _check_target(m)
    available = {io.name for io in m.inputs}
    for k, sg in enumerate(m.subgraphs):
        where = f"subgraphs[{k}]"
        if sg.id != k:
            raise SchemaError(f"{where}.id", f"is {sg.id}, the subgraph's position is {k}")
        for name in [*sg.inputs, *sg.outputs]:
            _tensor(m, name, f"{where}.inputs/outputs")
        missing = [t for t in sg.inputs if t not in available]
        if missing:
            raise SchemaError(f"{where}.inputs", f"{missing[0]!r} is made by no model input or earlier subgraph")
        if isinstance(sg, IntegerSubgraph):
            _check_integer(m, sg, where, context, blob_bytes)
        else:
            _check_onnx(m, sg, where, blob_bytes)
        if isinstance(sg, PluginSubgraph) and sg.payload is not None:
            blob = m.blobs.get(sg.payload)
            if blob is None or blob.dtype != "uint8" or len(blob.shape) != 1 or sg.payload.endswith(".onnx"):
                raise SchemaError(f"{where}.payload", f"{sg.payload!r} is not a byte blob of the table")
        available |= set(sg.outputs)
    for k, io in enumerate([*m.inputs, *m.outputs]):
        where = f"{'inputs' if k < len(m.inputs) else 'outputs'}[{k if k < len(m.inputs) else k - len(m.inputs)}]"
        t = _tensor(m, io.name, where)
        if (t.dtype, t.shape) != (io.dtype, io.shape):
            raise SchemaError(where, f"{io.name!r} is {io.dtype} {io.shape} but tensors has {t.dtype} {t.shape}")
        if k >= len(m.inputs) and io.name not in available:
            raise SchemaError(where, f"output {io.name!r} is made by no subgraph")


def _schema_error(exc: ValidationError, prefix: str) -> SchemaError:
    err = exc.errors()[0]
    parts = [p for p in err["loc"] if isinstance(p, int) or not any(c in p for c in "-[")]  # no union tags
    loc = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    return SchemaError(loc.lstrip(".") or "manifest", err["msg"])


def _check_limits(m: Manifest) -> None:
    limit = max_tensor_elements()
    for name, t in m.tensors.items():
        if math.prod(t.shape) > limit:
            raise SchemaError(f"tensors[{name!r}].shape", f"{math.prod(t.shape)} elements exceed the limit {limit}")
    for name, b in m.blobs.items():
        if math.prod(b.shape) * np.dtype(b.dtype).itemsize != b.nbytes:
            raise SchemaError(f"blobs[{name!r}].nbytes", f"{b.nbytes} does not match shape {b.shape} of {b.dtype}")


def _check_target(m: Manifest) -> None:
    """A bundled target named in the file must carry that target's fingerprint (a file claiming
    DPUCZDX8G with another fingerprint was altered); a user's own target cannot be checked here.
    Only a plain name is looked up: a name like ``/etc/passwd`` must not make the reader open it."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", m.target.name):
        return
    name, fingerprint = m.target.name, bundled_fingerprint(m.target.name)  # no YAML parsed: a load's usual case
    if fingerprint is None:
        try:
            t = load_target(m.target.name)
        except NpuflowError:  # not a bundled target
            return
        name, fingerprint = t.name, t.fingerprint
    if not same_fingerprint(fingerprint, m.target.fingerprint):
        raise SchemaError("target.fingerprint", f"{m.target.fingerprint} is not the fingerprint of "
                          f"{name} ({fingerprint})")


def _tensor(m: Manifest, name: str, where: str) -> Tensor:
    t = m.tensors.get(name)
    if t is None:
        raise SchemaError(where, f"tensor {name!r} is not described in tensors")
    return t


def _check_onnx(m: Manifest, sg: OnnxSubgraph | PluginSubgraph, where: str, blob_bytes: Callable[[str], bytes]) -> None:
    """The embedded model parses and takes/makes exactly the subgraph's tensors, typed as described."""
    blob = m.blobs.get(sg.onnx)
    if blob is None or blob.dtype != "uint8" or len(blob.shape) != 1 or not sg.onnx.endswith(".onnx"):
        raise SchemaError(f"{where}.onnx", f"{sg.onnx!r} is not a byte blob of the table")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(blob_bytes(sg.onnx))
    except Exception as exc:  # protobuf's DecodeError and upb's RuntimeError alike
        raise SchemaError(f"{where}.onnx", f"the embedded model does not parse: {exc}") from None
    inits = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    for label, declared, actual in (("inputs", sg.inputs, ins), ("outputs", sg.outputs, list(model.graph.output))):
        if sorted(declared) != sorted(v.name for v in actual):
            raise SchemaError(f"{where}.{label}", f"{declared} differ from the embedded model's "
                              f"{[v.name for v in actual]}")
        for v in actual:
            elem = v.type.tensor_type.elem_type
            if elem and helper.tensor_dtype_to_np_dtype(elem).name != m.tensors[v.name].dtype:
                raise SchemaError(f"{where}.{label}", f"{v.name!r} is {m.tensors[v.name].dtype} in the manifest "
                                  f"but {helper.tensor_dtype_to_np_dtype(elem).name} in the embedded model")


def _check_integer(m: Manifest, sg: IntegerSubgraph, where: str, context: dict,
                   blob_bytes: Callable[[str], bytes]) -> None:
    known = set(sg.inputs)
    for j, op in enumerate(sg.ops):
        at = f"{where}.ops[{j}]"
        for name in op.inputs:
            if name not in known:
                raise SchemaError(f"{at}.inputs", f"{name!r} is made by no subgraph input or earlier op")
        for name in op.outputs:
            _tensor(m, name, f"{at}.outputs")
            if name in known:
                raise SchemaError(f"{at}.outputs", f"{name!r} is written twice")
            known.add(name)
        for role, blob in op.blobs.items():
            if blob not in m.blobs or blob.endswith(".onnx"):
                raise SchemaError(f"{at}.blobs.{role}", f"{blob!r} is not an array of the blob table")
        try:
            attrs = ATTRS[op.op].model_validate(op.attrs, context=context)
        except ValidationError as exc:
            raise _schema_error(exc, f"{at}.attrs") from None
        OpCheck(m, op, attrs, at, blob_bytes).run()
    for name in sg.outputs:
        if name not in known - set(sg.inputs):
            raise SchemaError(f"{where}.outputs", f"{name!r} is made by no op of the subgraph")
    ops = [o.model_dump(by_alias=True) for o in sg.ops]
    tensors = {k: {"dtype": t.dtype, "shape": t.shape}  # the plan sizes the tensors the ops make, no others
               for k in dict.fromkeys(o for op in sg.ops for o in op.outputs) for t in (m.tensors[k],)}
    expected = memory.plan(ops, tensors, set(sg.inputs) | set(sg.outputs))
    if sg.memory.model_dump() != expected:
        raise SchemaError(f"{where}.memory", f"differs from the plan of its ops (arena {sg.memory.arena_bytes} B, "
                          f"planned {expected['arena_bytes']} B)")
    limit = max_tensor_elements() * ARENA_BYTES_PER_ELEMENT
    if expected["arena_bytes"] > limit:
        raise SchemaError(f"{where}.memory.arena_bytes", f"{expected['arena_bytes']} B exceed the limit of {limit} B "
                          "(raise NPUFLOW_MAX_TENSOR_ELEMENTS for larger models)")


# --- per-op consistency --------------------------------------------------------------------------

class OpCheck:
    """What one op's attributes imply about its tensors and blobs, compared with the manifest."""

    def __init__(self, m: Manifest, op: Op, attrs: Strict, where: str, blob_bytes: Callable[[str], bytes]) -> None:
        self.m, self.op, self.a, self.where, self.blob_bytes = m, op, attrs, where, blob_bytes
        self.x = m.tensors[op.inputs[0]] if op.inputs else None
        self.y = m.tensors[op.outputs[0]]

    def fail(self, field: str, reason: str) -> SchemaError:
        return SchemaError(f"{self.where}.{field}", reason)

    def run(self) -> None:
        getattr(self, f"_{self.op.op}")()

    # helpers

    def inputs(self, n: int) -> None:
        if len(self.op.inputs) != n:
            raise self.fail("inputs", f"{self.op.op} reads {n} tensor(s), not {len(self.op.inputs)}")

    def outputs(self, n: int = 1) -> None:
        if len(self.op.outputs) != n:
            raise self.fail("outputs", f"{self.op.op} writes {n} tensor(s), not {len(self.op.outputs)}")

    def blob(self, role: str, dtypes: set[str] | None = None, shape: list[int] | None = None) -> Blob:
        name = self.op.blobs.get(role)
        if name is None:
            raise self.fail("blobs", f"{self.op.op} needs a {role!r} blob")
        b = self.m.blobs[name]
        if dtypes is not None and b.dtype not in dtypes:
            raise self.fail(f"blobs.{role}", f"{name!r} is {b.dtype}, expected one of {sorted(dtypes)}")
        if shape is not None and b.shape != shape:
            raise self.fail(f"blobs.{role}", f"{name!r} has shape {b.shape}, expected {shape}")
        return b

    def roles(self, allowed: set[str]) -> None:
        extra = set(self.op.blobs) - allowed
        if extra:
            raise self.fail("blobs", f"unexpected blob role(s) {sorted(extra)}")

    def out_shape(self, shape: list[int], field: str = "attrs.out_shape") -> None:
        if list(shape) != self.y.shape:
            raise self.fail(field, f"the op makes shape {list(shape)} but {self.op.outputs[0]!r} is {self.y.shape}")

    def code(self, value: int, dtype: str, field: str) -> None:
        lo, hi = _range(dtype)
        if not lo <= value <= hi:
            raise self.fail(field, f"{value} is outside the {dtype} range [{lo}, {hi}]")

    def weighted_layer(self) -> None:
        """The frame of a convolution or matrix product: one integer input, one output, the weights
        ``w`` and the accumulator bias ``b``."""
        self.inputs(1)
        self.outputs()
        self.roles({"w", "b"})
        self.x_code()

    def x_code(self, field: str = "attrs.x_zp") -> None:
        if self.x.dtype not in CODE_DTYPES:
            raise self.fail("inputs", f"{self.op.inputs[0]!r} is {self.x.dtype}, not an integer code type")
        self.code(getattr(self.a, field.split(".")[-1]), self.x.dtype, field)

    def epilogue(self, ep, channels: int) -> None:
        if ep.dtype != self.y.dtype:
            raise self.fail("attrs.epilogue.dtype", f"{ep.dtype} but {self.op.outputs[0]!r} is {self.y.dtype}")
        self.code(ep.zp, ep.dtype, "attrs.epilogue.zp")
        for field in ("shift", "multiplier", "acc_scale"):
            value = getattr(ep, field, None)
            if isinstance(value, list) and len(value) != channels:
                raise self.fail(f"attrs.epilogue.{field}", f"{len(value)} values for {channels} channels")
            if isinstance(value, ArrayRef):
                self.epilogue_array(f"attrs.epilogue.{field}", value.blob, _ARRAYS[ep.mode, field], channels)
        for k, (lo, hi) in enumerate(getattr(ep, "clamps", [])):
            self.code(lo, ep.dtype, f"attrs.epilogue.clamps[{k}]")
            self.code(hi, ep.dtype, f"attrs.epilogue.clamps[{k}]")

    def epilogue_array(self, field: str, name: str, kind: tuple[str, float, float], channels: int) -> None:
        """A per-channel epilogue array stored as a blob (format 2.0): the field's stored dtype
        (``manifest_arrays.stored_array``), one value per channel, each within the field's range."""
        dtype, lo, hi = kind
        b = self.m.blobs.get(name)
        if b is None or name.endswith(".onnx") or b.dtype != dtype or b.shape != [channels]:
            raise self.fail(field, f"{name!r} is not a {dtype} blob of {channels} values in the blob table")
        values = np.frombuffer(self.blob_bytes(name), np.dtype(dtype).newbyteorder("<"))
        if not (np.all(np.isfinite(values)) and np.all(values >= lo) and np.all(values <= hi)):
            raise self.fail(field, f"{name!r} holds values outside [{lo}, {hi}]")

    def per_channel(self, field: str, value, channels: int) -> None:
        if isinstance(value, list) and len(value) != channels:
            raise self.fail(f"attrs.{field}", f"{len(value)} values for {channels} channels")

    def table(self, role: str, qmin: int, in_dtype: str, out_dtype: str, field: str = "attrs.qmin") -> None:
        """A code-to-code table: one entry per input code, starting at the input type's minimum."""
        lo, hi = _range(in_dtype)
        if qmin != lo:
            raise self.fail(field, f"{qmin} is not the minimum {lo} of {in_dtype}")
        self.blob(role, {out_dtype}, [hi - lo + 1])

    def passthrough(self, shape: list[int]) -> None:
        """Data movement (maxpool, reshape, transpose, slice, gather, pad): codes move, an optional
        table changes scale."""
        self.inputs(1)
        self.outputs()
        self.roles({"table"})
        self.x_code()
        if "table" in self.op.blobs:
            self.table("table", self.a.qmin, self.x.dtype, self.a.out_dtype)
        elif self.a.out_dtype != self.x.dtype or self.a.qmin != _range(self.x.dtype)[0]:
            raise self.fail("attrs.out_dtype", f"without a table the output type is the input's ({self.x.dtype})")
        if self.y.dtype != self.a.out_dtype:
            raise self.fail("attrs.out_dtype", f"{self.a.out_dtype} but {self.op.outputs[0]!r} is {self.y.dtype}")
        self.out_shape(self.a.out_shape)
        self.out_shape(shape)

    # kernels

    def _conv(self) -> None:
        a = self.a
        self.weighted_layer()
        if a.in_dtype != self.x.dtype or math.prod(a.in_shape) != math.prod(self.x.shape):
            raise self.fail("attrs.in_shape", f"{a.in_dtype} {a.in_shape} is not {self.op.inputs[0]!r} "
                            f"({self.x.dtype} {self.x.shape})")
        n, cin, h, w = a.in_shape
        cout = a.out_shape[1]
        if cin % a.group or cout % a.group:
            raise self.fail("attrs.group", f"{a.group} does not divide {cin} input and {cout} output channels")
        self.blob("w", {"int8", "int16", "uint8"}, [cout, cin // a.group, *a.kernel])
        self.blob("b", {"int64"}, [cout])
        self.per_channel("lshift", a.lshift, cout)
        hw = [_conv_out(size, k, s, d, p0 + p1) for size, k, s, d, p0, p1 in
              zip([h, w], a.kernel, a.strides, a.dilations, a.pads[:2], a.pads[2:])]
        geometry = [n, cout, *hw] if len(a.out_shape) == 4 or hw[0] != 1 else [n, cout, hw[1]]
        if math.prod(a.out_shape) != math.prod(self.y.shape) or a.out_shape != geometry:
            raise self.fail("attrs.out_shape", f"{a.out_shape}: the geometry gives {geometry} "
                            f"and {self.op.outputs[0]!r} is {self.y.shape}")
        self.epilogue(a.epilogue, cout)

    def _conv_transpose(self) -> None:
        a = self.a
        self.weighted_layer()
        if len(self.x.shape) != 4:
            raise self.fail("inputs", f"{self.op.inputs[0]!r} is not 4-D")
        n, cin, h, w = self.x.shape
        if cin % a.group:
            raise self.fail("attrs.group", f"{a.group} does not divide {cin} input channels")
        wb = self.blob("w", {"int8", "int16", "uint8"})
        if len(wb.shape) != 4 or wb.shape[0] != cin or wb.shape[2:] != a.kernel:
            raise self.fail("blobs.w", f"shape {wb.shape} is not [{cin}, C/g, *{a.kernel}]")
        cout = wb.shape[1] * a.group
        self.blob("b", {"int64"}, [cout])
        self.per_channel("lshift", a.lshift, cout)
        if a.out_shape[:2] != [n, cout] or a.out_shape != self.y.shape:
            raise self.fail("attrs.out_shape", f"{a.out_shape} is not [{n}, {cout}, ...] = {self.y.shape}")
        self.epilogue(a.epilogue, cout)

    def _matmul(self) -> None:
        a = self.a
        self.weighted_layer()
        if not self.x.shape:
            raise self.fail("inputs", "a matrix product needs at least 1-D input")
        wb = self.blob("w", {"int8", "int16", "uint8"})
        if len(wb.shape) != 2 or wb.shape[0] != self.x.shape[-1]:
            raise self.fail("blobs.w", f"shape {wb.shape} is not [{self.x.shape[-1]}, N]")
        self.blob("b", {"int64"}, [wb.shape[1]])
        self.per_channel("lshift", a.lshift, wb.shape[1])
        self.out_shape([*self.x.shape[:-1], wb.shape[1]])
        self.out_shape(a.out_shape)
        self.epilogue(a.epilogue, wb.shape[1])

    def _matmul2(self) -> None:
        a = self.a
        self.inputs(2)
        self.outputs()
        self.roles(set())
        xa, xb = (self.m.tensors[t] for t in self.op.inputs)
        for t, zp, field in ((xa, a.a_zp, "attrs.a_zp"), (xb, a.b_zp, "attrs.b_zp")):
            if t.dtype not in CODE_DTYPES:
                raise self.fail("inputs", f"operand is {t.dtype}, not an integer code type")
            self.code(zp, t.dtype, field)
        self.out_shape(_matmul_shape(xa.shape, xb.shape, self.fail))
        self.out_shape(a.out_shape)
        self.epilogue(a.epilogue, 1)

    def _eltwise(self) -> None:
        a = self.a
        self.outputs()
        fed = [o.input for o in a.operands if o.input is not None]
        consts = {o.const for o in a.operands if o.const is not None}
        if any((o.input is None) == (o.const is None) for o in a.operands) or sorted(fed) != list(range(len(fed))):
            raise self.fail("attrs.operands", "each operand is one input (numbered in order) or one constant")
        self.inputs(len(fed))
        self.roles(consts)
        shapes = []
        for k, o in enumerate(a.operands):
            if o.const is not None:
                b = self.blob(o.const, {"int8", "uint8", "int16", "uint16"})
                dtype, shape = b.dtype, b.shape
            else:
                t = self.m.tensors[self.op.inputs[o.input]]
                dtype, shape = t.dtype, t.shape
            if dtype not in CODE_DTYPES:
                raise self.fail(f"attrs.operands[{k}]", f"operand is {dtype}, not an integer code type")
            self.code(o.zp, dtype, f"attrs.operands[{k}].zp")
            shapes.append(shape)
        try:
            shape = list(np.broadcast_shapes(*map(tuple, shapes)))
        except ValueError:
            raise self.fail("attrs.operands", f"operand shapes {shapes} do not broadcast") from None
        self.out_shape(shape)
        self.out_shape(a.out_shape)
        if a.qlinear is not None:
            if a.mode != "add" or a.qlinear.out_dtype != self.y.dtype:
                raise self.fail("attrs.qlinear", "QLinearAdd adds, into the output's type")
            self.code(a.qlinear.out_zp, a.qlinear.out_dtype, "attrs.qlinear.out_zp")
        else:
            self.epilogue(a.epilogue, shape[1 % len(shape)] if shape else 1)

    def _pool(self, kernel_fits: bool = True) -> None:
        a = self.a
        self.inputs(1)
        self.outputs()
        if len(self.x.shape) != 4 or len(a.out_shape) != 4 or a.out_shape[:2] != self.x.shape[:2]:
            raise self.fail("attrs.out_shape", f"{a.out_shape} is not a 4-D pooling of {self.x.shape}")
        for axis in (0, 1):
            need = (a.out_shape[2 + axis] - 1) * a.strides[axis] + (a.kernel[axis] - 1) * a.dilations[axis] + 1
            have = self.x.shape[2 + axis] + a.pads[axis] + a.pads[axis + 2]
            if a.out_shape[2 + axis] < 1 or need > have:
                raise self.fail("attrs.out_shape", f"{a.out_shape}: its windows need {need} rows/columns on axis "
                                f"{2 + axis}, the padded input has {have}")

    def _maxpool(self) -> None:
        self._pool()
        self.passthrough(self.a.out_shape)

    def _avgpool(self) -> None:
        a = self.a
        self._pool()
        self.roles(set())
        self.x_code()
        self.out_shape(a.out_shape)
        self.epilogue(a.epilogue, a.out_shape[1])

    def _reshape(self) -> None:
        self.inputs(1)
        if math.prod(self.a.out_shape) != math.prod(self.x.shape):
            raise self.fail("attrs.out_shape", f"{self.a.out_shape} does not hold the {self.x.shape} input")
        self.passthrough(self.a.out_shape)

    def _transpose(self) -> None:
        self.inputs(1)
        perm = self.a.perm
        if sorted(perm) != list(range(len(self.x.shape))):
            raise self.fail("attrs.perm", f"{perm} is not a permutation of the input's {len(self.x.shape)} axes")
        self.passthrough([self.x.shape[p] for p in perm])

    def _shuffle(self) -> None:
        self.inputs(1)
        view, perm = self.a.view, self.a.perm
        if math.prod(view) != math.prod(self.x.shape) or sorted(perm) != list(range(len(view))):
            raise self.fail("attrs.view", f"{view} permuted by {perm} is no view of the input's {self.x.shape}")
        if math.prod(self.a.out_shape) != math.prod(view):
            raise self.fail("attrs.out_shape", f"{self.a.out_shape} does not hold the {self.x.shape} input")
        self.passthrough(self.a.out_shape)

    def _slice(self) -> None:
        self.inputs(1)
        slices = self.a.slices
        if len(slices) != len(self.x.shape) or any(c == 0 for _, _, c in slices):
            raise self.fail("attrs.slices", f"one [start, stop, step != 0] per axis of {self.x.shape}")
        self.passthrough([len(range(*slice(s, e, c).indices(d))) for (s, e, c), d in zip(slices, self.x.shape)])

    def _gather(self) -> None:
        self.inputs(1)
        idx = self.a.indices
        if len(idx) != len(self.x.shape) or any(not all(-d <= i < d for i in ix) for ix, d in zip(idx, self.x.shape)):
            raise self.fail("attrs.indices", f"one list of indices within each axis of {self.x.shape}")
        self.passthrough([len(ix) for ix in idx])

    def _pad(self) -> None:
        self.inputs(1)
        a = self.a
        if len(a.width) != len(self.x.shape):
            raise self.fail("attrs.width", f"one [before, after] per axis of {self.x.shape}")
        if a.mode != "constant" and any(d == 0 and (b or e) for (b, e), d in zip(a.width, self.x.shape)):
            raise self.fail("attrs.mode", f"{a.mode} padding of an empty axis")
        self.code(a.pad_code, a.out_dtype, "attrs.pad_code")
        self.passthrough([d + b + e for (b, e), d in zip(a.width, self.x.shape)])

    def _concat(self) -> None:
        a = self.a
        self.outputs()
        fed = [p.input for p in a.parts if p.input is not None]
        if any((p.input is None) == (p.const is None) for p in a.parts) or sorted(fed) != list(range(len(fed))):
            raise self.fail("attrs.parts", "each part is one input (numbered in order) or one constant")
        self.inputs(len(fed))
        self.roles({r for p in a.parts for r in (p.table, p.const) if r})
        batch = self.m.tensors[self.op.inputs[0]].shape[0] if fed and self.m.tensors[self.op.inputs[0]].shape else 1
        shapes = []
        for k, p in enumerate(a.parts):
            b = None
            if p.const is not None:
                b = self.blob(p.const, {"int8", "uint8", "int16", "uint16"})
                dtype, shape = b.dtype, [batch, *b.shape[1:]] if b.shape else None
            else:
                t = self.m.tensors[self.op.inputs[p.input]]
                dtype, shape = t.dtype, t.shape
            if dtype not in CODE_DTYPES or not shape:
                raise self.fail(f"attrs.parts[{k}]", f"part is {dtype} {shape}, not integer codes with an axis")
            if b is not None and b.shape[0] not in (1, batch):
                raise self.fail(f"attrs.parts[{k}]", f"constant of batch {b.shape[0]}, not {batch}")
            if p.table is not None:
                self.table(p.table, p.qmin, dtype, a.out_dtype, f"attrs.parts[{k}].qmin")
            elif dtype != a.out_dtype:
                raise self.fail(f"attrs.parts[{k}]", f"{dtype} part without a table in a {a.out_dtype} concat")
            shapes.append(shape)
        rank = len(shapes[0])
        if a.axis >= rank or any(len(s) != rank or s[:a.axis] + s[a.axis + 1:] != shapes[0][:a.axis] +
                                 shapes[0][a.axis + 1:] for s in shapes):
            raise self.fail("attrs.axis", f"parts {shapes} do not concatenate on axis {a.axis}")
        self.out_shape([*shapes[0][:a.axis], sum(s[a.axis] for s in shapes), *shapes[0][a.axis + 1:]])
        self.out_shape(a.out_shape)
        if self.y.dtype != a.out_dtype:
            raise self.fail("attrs.out_dtype", f"{a.out_dtype} but {self.op.outputs[0]!r} is {self.y.dtype}")

    def _split(self) -> None:
        a = self.a
        self.inputs(1)
        self.outputs(len(a.parts))
        self.roles({t for t in a.tables if t})
        if self.x.dtype not in CODE_DTYPES or a.axis >= len(self.x.shape):
            raise self.fail("attrs.axis", f"{a.axis} is not an axis of integer codes {self.x.dtype} {self.x.shape}")
        if len(a.tables) != len(a.parts) or a.qmin != _range(self.x.dtype)[0]:
            raise self.fail("attrs.tables", "one table (or null) per part, qmin the input type's minimum")
        for k, ((b, e), table, out) in enumerate(zip(a.parts, a.tables, self.op.outputs)):
            if not b <= e <= self.x.shape[a.axis]:
                raise self.fail(f"attrs.parts[{k}]", f"[{b}, {e}] is not within axis size {self.x.shape[a.axis]}")
            dtype = self.x.dtype
            if table:
                self.table(table, a.qmin, self.x.dtype, a.out_dtype)
                dtype = a.out_dtype
            t = self.m.tensors[out]
            shape = [*self.x.shape[:a.axis], e - b, *self.x.shape[a.axis + 1:]]
            if (t.dtype, t.shape) != (dtype, shape):
                raise self.fail("outputs", f"{out!r} is {t.dtype} {t.shape}, the part is {dtype} {shape}")

    def _table_io(self) -> None:
        """A table op (``lut``, ``lut_channel``): one input of integer codes, one output, its table."""
        self.inputs(1)
        self.outputs()
        self.roles({"table"})
        if self.x.dtype not in CODE_DTYPES:
            raise self.fail("inputs", f"{self.op.inputs[0]!r} is {self.x.dtype}, not integer codes")

    def _table_output(self) -> None:
        """A table's output: the input's shape, the table's code type."""
        if (self.y.dtype, self.y.shape) != (self.a.out_dtype, self.x.shape):
            raise self.fail("outputs", f"{self.op.outputs[0]!r} is {self.y.dtype} {self.y.shape}, a table maps "
                            f"{self.x.shape} to {self.a.out_dtype}")

    def _lut(self) -> None:
        self._table_io()
        self.table("table", self.a.qmin, self.x.dtype, self.a.out_dtype)
        self._table_output()

    def _lut_channel(self) -> None:
        """One table per element of ``attrs.shape``, which broadcasts to the input's shape."""
        self._table_io()
        shape = self.a.shape
        if len(shape) != len(self.x.shape) or any(s not in (1, d) for s, d in zip(shape, self.x.shape)):
            raise self.fail("attrs.shape", f"{shape} does not broadcast to the input's shape {self.x.shape}")
        lo, hi = _range(self.x.dtype)
        if self.a.qmin != lo:
            raise self.fail("attrs.qmin", f"{self.a.qmin} is not the minimum {lo} of {self.x.dtype}")
        self.blob("table", {self.a.out_dtype}, [int(np.prod(shape)), hi - lo + 1])
        self._table_output()

    def _select(self) -> None:
        """Two integer inputs, a table each from its type's minimum to the output type, their broadcast out."""
        a, shapes = self.a, []
        self.inputs(2)
        self.outputs()
        self.roles({"t0", "t1"})
        for k, name in enumerate(self.op.inputs):
            t = self.m.tensors[name]
            if t.dtype not in CODE_DTYPES:
                raise self.fail("inputs", f"{name!r} is {t.dtype}, not integer codes")
            self.table(f"t{k}", a.qmins[k], t.dtype, a.out_dtype, f"attrs.qmins[{k}]")
            shapes.append(t.shape)
        try:
            shape = list(np.broadcast_shapes(*map(tuple, shapes)))
        except ValueError:
            raise self.fail("inputs", f"input shapes {shapes} do not broadcast") from None
        self.out_shape(shape)
        if self.y.dtype != a.out_dtype:
            raise self.fail("attrs.out_dtype", f"{a.out_dtype} but {self.op.outputs[0]!r} is {self.y.dtype}")

    def _softmax(self) -> None:
        """Codes in, the same shape out; axes within the rank; one float64 exponential per code difference."""
        self._table_io()
        a, (lo, hi) = self.a, _range(self.x.dtype)
        self.blob("table", {"float32" if self.x.dtype == a.out_dtype and hi - lo == 255 else "float64"}, [hi - lo + 1])
        if any(ax >= len(self.x.shape) for ax in a.axes):
            raise self.fail("attrs.axes", f"{a.axes} reach past the input's rank {len(self.x.shape)}")
        dt = np.dtype(a.out_dtype)
        if (a.bits, a.signed) != (dt.itemsize * 8, dt.kind == "i"):
            raise self.fail("attrs.bits", f"{a.bits}-bit {'signed' if a.signed else 'unsigned'} is not {a.out_dtype}")
        self.code(a.out_zp, a.out_dtype, "attrs.out_zp")
        self._table_output()

    def _quantize(self) -> None:
        a = self.a
        self.inputs(1)
        self.outputs()
        self.roles(set())
        dt = np.dtype(a.dtype)
        if (a.bits, a.signed) != (dt.itemsize * 8, dt.kind == "i") or self.y.dtype != a.dtype:
            raise self.fail("attrs.bits", f"{a.bits}-bit {'signed' if a.signed else 'unsigned'} is not {a.dtype} "
                            f"({self.op.outputs[0]!r} is {self.y.dtype})")
        if self.x.dtype not in ("float32", "float16", "float64") or self.x.shape != self.y.shape:
            raise self.fail("inputs", f"quantizes float tensors of the output's shape, not "
                            f"{self.x.dtype} {self.x.shape}")
        self.code(a.zp, a.dtype, "attrs.zp")

    def _dequantize(self) -> None:
        a = self.a
        self.inputs(1)
        self.outputs()
        self.roles(set())
        if self.x.dtype not in CODE_DTYPES or self.x.shape != self.y.shape:
            raise self.fail("inputs", f"dequantizes integer codes of the output's shape, not {self.x.dtype} "
                            f"{self.x.shape}")
        channels = 1 if a.axis is None else (self.x.shape[a.axis] if a.axis < len(self.x.shape) else -1)
        for field in ("scale", "zp"):
            value = getattr(a, field)
            count = len(value) if isinstance(value, list) else 1
            if channels < 0 or (isinstance(value, list) and count not in (1, channels)):
                raise self.fail(f"attrs.{field}", f"{count} value(s) for axis {a.axis} of {self.x.shape}")
        for k, zp in enumerate(a.zp if isinstance(a.zp, list) else [a.zp]):
            self.code(zp, self.x.dtype, f"attrs.zp[{k}]")


#: Per (epilogue mode, field): the dtype a stored array has and its values' bounds (the JSON
#: fields' ``Shift``, ``Multiplier``, ``Scale`` and ``Real`` of ``manifest_schema``).
_ARRAYS = {("shift", "shift"): ("int64", -MAX_LEFT_SHIFT, MAX_SHIFT),
           ("fixed", "shift"): ("int64", -MAX_LEFT_SHIFT, MAX_SHIFT),
           ("fixed", "multiplier"): ("int64", 1, (1 << 31) - 1),
           ("scale", "multiplier"): ("float64", float(np.nextafter(0.0, 1.0)), np.inf),  # > 0
           ("float", "acc_scale"): ("float64", -np.inf, np.inf)}


def _range(dtype: str) -> tuple[int, int]:
    dt = np.dtype(dtype)
    return qrange(dt.itemsize * 8, dt.kind == "i")


def _conv_out(size: int, kernel: int, stride: int, dilation: int, pads: int) -> int:
    return (size + pads - dilation * (kernel - 1) - 1) // stride + 1


def _matmul_shape(a: list[int], b: list[int], fail: Callable[[str, str], SchemaError]) -> list[int]:
    """numpy's ``matmul`` result shape (1-D operands promoted and the added axis dropped)."""
    if not a or not b:
        raise fail("inputs", "matrix product of a scalar")
    aa, bb = (a if len(a) > 1 else [1, *a]), (b if len(b) > 1 else [*b, 1])
    if aa[-1] != bb[-2]:
        raise fail("inputs", f"inner dimensions {a} and {b} differ")
    try:
        batch = list(np.broadcast_shapes(tuple(aa[:-2]), tuple(bb[:-2])))
    except ValueError:
        raise fail("inputs", f"batch dimensions of {a} and {b} do not broadcast") from None
    return batch + ([aa[-2]] if len(a) > 1 else []) + ([bb[-1]] if len(b) > 1 else [])
