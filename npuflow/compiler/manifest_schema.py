"""The schema of the ``.npuf`` manifest, checked before anything is built from a file.

The checksums of a ``.npuf`` prove that a file is the one some writer sealed, not that the writer
was npuflow's compiler, of this version, without a bug: a manifest that is well-formed JSON with
a valid checksum can still declare a 10^12-byte arena, a shift of 200, a stride of 0 or an op
reading a tensor nobody makes.  :func:`.manifest_check.validate` accepts exactly the manifests the
compiler (``compile.py``, ``lowering.py``, ``epilogue.py``, ``memory.py``) writes, in three layers
(the first is this module's models, the other two are :mod:`.manifest_check`):

1. **types and ranges** (pydantic models, strict: no ``"3"`` for 3, no ``true`` for 1, no NaN):
   every field the runtime reads, with the values it can execute -- shifts, multipliers, zero
   points within their integer type, kernel/stride/dilation >= 1, shapes bounded by
   :func:`npuflow.model_checks.max_tensor_elements`;
2. **references**: subgraph inputs made by the model inputs or an earlier subgraph, op inputs by
   the subgraph inputs or an earlier op, every tensor described, every blob role an op needs in
   the blob table with the dtype and shape the op implies, an embedded ONNX model whose inputs and
   outputs are the subgraph's; the target, when it is a bundled one, with its fingerprint;
3. **derived facts recomputed**: output shapes from the op geometry (convolution, pooling,
   reshape, transpose, slice, gather, pad, concat, split, matmul), lookup-table sizes from the
   input type, and the memory plan itself (``memory.plan`` on the ops, so an arena size or buffer
   offset that differs from the plan is refused, and the arena is bounded by the tensors).

A file compiled for several input shape sets (format 1.1) holds one program per set: the
manifest's own, and one per ``variants`` entry (its shape-dependent fields over the shared blob
table), each validated as a whole manifest; input/output names, dtypes and ranks must agree.

Format 1.2 adds a packed file (``packed: [{name, manifest}]`` over one blob table, each model
validated as a whole manifest, all for one target), the ``removed`` list of nodes ``npuflow
modify`` took out (with their parameters) and the ``NHWC`` layout of an input such a removal
exposes; :func:`format_version` gives the version a manifest needs, so older files stay 1.0/1.1.

Format 2.0 stores an epilogue's per-channel arrays of :data:`.manifest_arrays.MIN_VALUES` values
or more as blobs (``{"blob": name}`` in the field, :class:`ArrayRef`), checked for dtype, length and
range like the JSON lists; 1.x files are read as before.

Files of a newer *minor* format version may carry fields this reader does not know: they are
ignored (a minor version only adds); at this reader's version an unknown field is corruption.
Every failure is ``NPF_COMPILE_CORRUPT`` naming the field (``subgraphs[0].ops[3].attrs.strides``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from onnx import TensorProto, helper
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from ..numerics import RoundMode
from ..operators import CHAIN_OPS
from ..targets.spec import Target
from . import manifest_arrays

#: The ``.npuf`` format version this schema describes (``artifact.FORMAT_MAJOR/MINOR`` are taken
#: from it): a change of the manifest is a change of this schema and of the version together.
#: 1.1 added ``variants`` (several shape sets), 1.2 ``packed`` (several models, ``npuflow pack``),
#: ``removed`` (nodes ``npuflow modify`` took out) and the ``NHWC`` input layout; 2.0 stores the
#: epilogues' long per-channel arrays as blobs (:mod:`.manifest_arrays`), a field an older reader
#: cannot read, hence a new major version, which such a reader refuses as one (``NPF_COMPILE_VERSION``).
#: 1.3 / 2.1 add a graph input's ``clipped_by`` (the quantize steps it reaches through ops that
#: keep its values, :mod:`.input_steps`), which an older reader ignores as a newer minor's field.
SCHEMA_VERSION = (2, 1)
#: The last minor version of format 1: this reader reads 1.0-1.3 files as before.
V1_MINOR = 3
#: Files with ``packed``, ``removed`` or an ``NHWC`` input and nothing newer are written as 1.2.
PACKED_MINOR = 2
#: The minor version, by major version, of a file whose inputs carry ``clipped_by``.
CLIPPED_BY_MINOR = {1: V1_MINOR, SCHEMA_VERSION[0]: SCHEMA_VERSION[1]}
#: The newest minor version this reader knows of each major version it reads.
READABLE = {1: V1_MINOR, SCHEMA_VERSION[0]: SCHEMA_VERSION[1]}
#: Files without ``variants`` (one shape set) are written as 1.0, byte for byte as before 1.1.
SINGLE_SHAPE_MINOR = 0
#: Files with ``variants`` and nothing newer are written as 1.1, byte for byte as before 1.2.
VARIANTS_MINOR = 1


def format_version(manifest: dict) -> tuple[int, int]:
    """The oldest format version whose readers understand ``manifest``: a file only claims the
    version whose fields it uses, so files an older npuflow could read stay readable there."""
    major = SCHEMA_VERSION[0] if manifest_arrays.uses_blobs(manifest) else 1
    if _clipped_by(manifest):
        return major, CLIPPED_BY_MINOR[major]
    return (major, 0) if major != 1 else (1, minor_version(manifest))


def _clipped_by(manifest: dict) -> bool:
    """Whether any program's input records ``clipped_by`` (format 1.3 / 2.1)."""
    return any("clipped_by" in io for p in manifest_arrays.programs(manifest) for io in p["inputs"])


def minor_version(manifest: dict) -> int:
    """The oldest minor version of format 1 whose readers understand ``manifest``."""
    models = [e["manifest"] for e in manifest["packed"]] if "packed" in manifest else [manifest]
    if "packed" in manifest or any("removed" in m for m in models) or any(
            io.get("layout") == "NHWC" for p in manifest_arrays.programs(manifest)
            for io in [*p["inputs"], *p["outputs"]]):
        return PACKED_MINOR
    return VARIANTS_MINOR if manifest.get("variants") else SINGLE_SHAPE_MINOR

#: numpy names of every ONNX tensor type except strings (what a tensor of a compiled model may be).
DTYPES = frozenset(helper.tensor_dtype_to_np_dtype(v).name for v in TensorProto.DataType.values()
                   if v not in (TensorProto.UNDEFINED, TensorProto.STRING))
#: Integer code types of quantized tensors and integer-program outputs.
CODE_DTYPES = frozenset({"int8", "uint8", "int16", "uint16"})
#: Blob element types a ``.npuf`` stores (the artifact reader's one list).
BLOB_DTYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "int64", "float32", "float64", "uint64"})

MAX_RANK = 16
#: Right shifts reach 31 + |exponent| of the fixed-point multiplier of a tiny ratio (a dead channel:
#: 150 on PP-OCRv4 det for cpu-int8); float64 exponents end at -1074.  Any shift >= 64 gives 0.
MAX_SHIFT = 1200
MAX_LEFT_SHIFT = 32
MAX_WINDOW = 1 << 16  # kernel, stride, dilation, pad values
#: Bytes of one subgraph's activation arena, per allowed tensor element (8: an int64 tensor of the
#: largest size; the default element limit 2^31 gives 16 GiB).
ARENA_BYTES_PER_ELEMENT = 8

Int = Annotated[int, Field(strict=True)]
Count = Annotated[int, Field(strict=True, ge=0)]
Positive = Annotated[int, Field(strict=True, ge=1, le=MAX_WINDOW)]
Pad = Annotated[int, Field(strict=True, ge=0, le=MAX_WINDOW)]


def _float_only(value: Any) -> Any:
    """The compiler writes every real as a JSON float (``1.0``, never ``1``); pydantic's strict
    float would still take an int of any size (``2**70``), which numpy then holds as an object."""
    if not isinstance(value, float):
        raise ValueError("expected a real number written with a fraction or exponent")
    return value


Real = Annotated[float, BeforeValidator(_float_only), Field(allow_inf_nan=False)]
Scale = Annotated[float, BeforeValidator(_float_only), Field(gt=0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=4096)]
Dtype = Literal[tuple(sorted(DTYPES))]  # type: ignore[valid-type]
CodeDtype = Literal[tuple(sorted(CODE_DTYPES))]  # type: ignore[valid-type]
Round = Literal[tuple(m.value for m in RoundMode)]  # type: ignore[valid-type]
Dim = Annotated[int, Field(strict=True, ge=0, le=1 << 40)]
Shape = Annotated[list[Dim], Field(max_length=MAX_RANK)]
Pair = Annotated[list[Pad], Field(min_length=2, max_length=2)]
Quad = Annotated[list[Pad], Field(min_length=4, max_length=4)]
Window = Annotated[list[Positive], Field(min_length=2, max_length=2)]
Shift = Annotated[int, Field(strict=True, ge=-MAX_LEFT_SHIFT, le=MAX_SHIFT)]
LeftShift = Annotated[int, Field(strict=True, ge=0, le=MAX_LEFT_SHIFT)]
Multiplier = Annotated[int, Field(strict=True, ge=1, lt=1 << 31)]


class Strict(BaseModel):
    """Unknown fields are corruption, except in a file of a newer minor version (context flag)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _newer_minor(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and info.context and info.context.get("ignore_unknown"):
            known = {f.alias or name for name, f in cls.model_fields.items()}
            return {k: v for k, v in data.items() if k in known}
        return data


# --- tensors and model interface ----------------------------------------------------------------

class Quant(Strict):
    dtype: Dtype
    scale: Union[Scale, Annotated[list[Scale], Field(min_length=1)]]
    zero_point: Union[Int, Annotated[list[Int], Field(min_length=1)]]
    axis: Optional[Int]
    round_mode: Round


class Tensor(Strict):
    dtype: Dtype
    shape: Shape
    quant: Optional[Quant] = None


class ClipStep(Strict):
    """A quantize step a graph input reaches through ops that keep its values (format 1.3 / 2.1)."""

    node: Name
    quant: Quant


class Io(Tensor):
    name: Name
    layout: Literal["NCHW", "NHWC", ""]
    clipped_by: Optional[Annotated[list[ClipStep], Field(min_length=1)]] = None


class RemovedTensor(Tensor):
    name: Name
    layout: Optional[Literal["NCHW", "NHWC", ""]] = None


class RemovedNode(Strict):
    """A node ``npuflow modify`` took out (format 1.2): the application now does its work, so its
    parameters (scale, zero point, permutation, constants) stay readable in ``info``."""

    name: Name
    op: Name
    side: Literal["input", "output"]
    engine: Literal["integer", "onnx"]
    subgraph: Name
    input: RemovedTensor
    output: RemovedTensor
    attrs: dict


class Blob(Strict):
    offset: Count
    nbytes: Count
    dtype: Literal[tuple(sorted(BLOB_DTYPES))]  # type: ignore[valid-type]
    shape: Shape
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


# --- epilogues -----------------------------------------------------------------------------------

class Ref(Strict):
    t: Optional[Name] = None
    c: Optional[Real] = None

    @model_validator(mode="after")
    def _one(self) -> "Ref":
        if (self.t is None) == (self.c is None):
            raise ValueError("a chain reference is either a tensor {'t'} or a constant {'c'}")
        return self


class ChainAttrs(Strict):
    alpha: Optional[Real] = None
    beta: Optional[Real] = None
    min: Optional[Real] = None
    max: Optional[Real] = None


class ChainStep(Strict):
    op: Literal[tuple(sorted(CHAIN_OPS))]  # type: ignore[valid-type]
    in_: Annotated[list[Optional[Ref]], Field(alias="in", min_length=1, max_length=3)]
    out: Name
    attrs: ChainAttrs


class _EpilogueBase(Strict):
    scale: Scale
    zp: Int
    dtype: CodeDtype
    round: Round


Clamps = list[Annotated[list[Int], Field(min_length=2, max_length=2)]]


class ArrayRef(Strict):
    """Format 2.0: a per-channel epilogue array stored as a blob (:mod:`.manifest_arrays`); its
    dtype, length and values are checked against the field by ``manifest_check``."""

    blob: Name


class ShiftEpilogue(_EpilogueBase):
    mode: Literal["shift"]
    clamps: Clamps
    shift: Union[Shift, Annotated[list[Shift], Field(min_length=1)], ArrayRef]


class FixedEpilogue(_EpilogueBase):
    mode: Literal["fixed"]
    clamps: Clamps
    multiplier: Union[Multiplier, Annotated[list[Multiplier], Field(min_length=1)], ArrayRef]
    shift: Union[Shift, Annotated[list[Shift], Field(min_length=1)], ArrayRef]


class ScaleEpilogue(_EpilogueBase):
    mode: Literal["scale"]
    clamps: Clamps
    multiplier: Union[Scale, Annotated[list[Scale], Field(min_length=1)], ArrayRef]


class FloatEpilogue(_EpilogueBase):
    mode: Literal["float"]
    acc_scale: Union[Real, Annotated[list[Real], Field(min_length=1)], ArrayRef]
    chain: Annotated[list[ChainStep], Field(max_length=16)]
    result: Name

    @model_validator(mode="after")
    def _chain_refs(self) -> "FloatEpilogue":
        known = {"$x"}
        for k, step in enumerate(self.chain):
            binary = step.op in ("Add", "Sub", "Mul", "Div")
            if binary and (len(step.in_) != 2 or step.in_[0] is None or step.in_[1] is None):
                raise ValueError(f"chain step {k} ({step.op}) needs two operands")
            # a binary step may take its constant first (``1.702 * x``); any other reads a tensor first
            reads = step.in_ if binary else step.in_[:1]
            if not any(ref is not None and ref.t is not None for ref in reads):
                raise ValueError(f"chain step {k} ({step.op}) reads no tensor")
            for ref in step.in_:
                if ref is not None and ref.t is not None and ref.t not in known:
                    raise ValueError(f"chain step {k} reads {ref.t!r}, which no earlier step makes")
            known.add(step.out)
        if self.result not in known:
            raise ValueError(f"chain result {self.result!r} is made by no step")
        return self


Epilogue = Annotated[Union[ShiftEpilogue, FixedEpilogue, ScaleEpilogue, FloatEpilogue], Field(discriminator="mode")]


# --- op attributes (one model per kernel) -------------------------------------------------------

class _Passthrough(Strict):
    qmin: Int
    x_zp: Int
    out_dtype: CodeDtype
    out_shape: Shape


class _WindowAttrs(Strict):
    """What every convolution carries: its window, groups, input zero point and exact chunk length."""

    strides: Window
    pads: Quad
    dilations: Window
    group: Positive
    kernel: Window
    x_zp: Int
    k_chunk: Annotated[int, Field(strict=True, ge=1)]
    lshift: Union[LeftShift, Annotated[list[LeftShift], Field(min_length=1)]]
    epilogue: Epilogue


class ConvAttrs(_WindowAttrs):
    in_shape: Annotated[Shape, Field(min_length=4, max_length=4)]
    in_dtype: CodeDtype
    split_bytes: bool
    out_shape: Annotated[Shape, Field(min_length=3, max_length=4)]  # a 1-D conv runs as 2-D with H = 1


class ConvTransposeAttrs(_WindowAttrs):
    wide: bool
    out_shape: Annotated[Shape, Field(min_length=4, max_length=4)]


class MatmulAttrs(Strict):
    x_zp: Int
    k_chunk: Annotated[int, Field(strict=True, ge=1)]
    wide: bool
    lshift: Union[LeftShift, Annotated[list[LeftShift], Field(min_length=1)]]
    out_shape: Annotated[Shape, Field(min_length=1)]
    epilogue: Epilogue


class Matmul2Attrs(Strict):
    a_zp: Int
    b_zp: Int
    out_shape: Annotated[Shape, Field(min_length=1)]
    epilogue: Epilogue


class Operand(Strict):
    zp: Int
    const: Optional[Name] = None
    input: Optional[Annotated[int, Field(strict=True, ge=0, le=1)]] = None


class QLinear(Strict):
    scales: Annotated[list[Scale], Field(min_length=2, max_length=2)]
    zps: Annotated[list[Int], Field(min_length=2, max_length=2)]
    out_scale: Scale
    out_zp: Int
    scalar: Annotated[list[bool], Field(min_length=2, max_length=2)]
    out_dtype: CodeDtype


class EltwiseAttrs(Strict):
    mode: Literal["add", "sub", "mul"]
    operands: Annotated[list[Operand], Field(min_length=2, max_length=2)]
    out_shape: Shape
    align: Optional[Annotated[list[Annotated[int, Field(strict=True, ge=0, le=31)]], Field(min_length=2,
                                                                                         max_length=2)]] = None
    dequant: Optional[Annotated[list[Scale], Field(min_length=2, max_length=2)]] = None
    qlinear: Optional[QLinear] = None
    epilogue: Optional[Epilogue] = None

    @model_validator(mode="after")
    def _one_form(self) -> "EltwiseAttrs":
        forms = [self.align is not None, self.dequant is not None, self.qlinear is not None]
        if sum(forms) != 1:
            raise ValueError("exactly one of align (integer), dequant (float) or qlinear (QLinearAdd)")
        if (self.qlinear is None) == (self.epilogue is None):
            raise ValueError("an epilogue goes with align or dequant, not with qlinear")
        if self.dequant is not None and self.epilogue.mode != "float":
            raise ValueError("a float-scale eltwise needs a float epilogue")
        return self


class PoolAttrs(Strict):
    kernel: Window
    strides: Window
    pads: Quad
    dilations: Window
    real_pads: Optional[Quad] = None


class MaxpoolAttrs(PoolAttrs, _Passthrough):
    pass


class AvgpoolAttrs(PoolAttrs):
    count_include_pad: Literal[0, 1]
    x_zp: Int
    out_shape: Annotated[Shape, Field(min_length=4, max_length=4)]
    epilogue: FloatEpilogue
    qlinear: Optional[Literal["global", "window"]] = None


class ReshapeAttrs(_Passthrough):
    pass


class TransposeAttrs(_Passthrough):
    perm: Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(max_length=MAX_RANK)]


class ShuffleAttrs(_Passthrough):
    """DepthToSpace / SpaceToDepth: the input reshaped to ``view``, transposed by ``perm``."""
    view: Shape
    perm: Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(max_length=MAX_RANK)]


class SliceAttrs(_Passthrough):
    slices: Annotated[list[Annotated[list[Int], Field(min_length=3, max_length=3)]], Field(max_length=MAX_RANK)]


class GatherAttrs(_Passthrough):
    indices: Annotated[list[list[Int]], Field(max_length=MAX_RANK)]


class PadAttrs(_Passthrough):
    width: Annotated[list[Pair], Field(max_length=MAX_RANK)]
    mode: Literal["constant", "reflect", "edge"]
    pad_code: Int


class ConcatPart(Strict):
    qmin: Int
    table: Optional[Name] = None
    const: Optional[Name] = None
    input: Optional[Annotated[int, Field(strict=True, ge=0)]] = None


class ConcatAttrs(Strict):
    axis: Annotated[int, Field(strict=True, ge=0, lt=MAX_RANK)]
    parts: Annotated[list[ConcatPart], Field(min_length=1)]
    out_dtype: CodeDtype
    out_shape: Shape


class SplitAttrs(Strict):
    axis: Annotated[int, Field(strict=True, ge=0, lt=MAX_RANK)]
    parts: Annotated[list[Annotated[list[Count], Field(min_length=2, max_length=2)]], Field(min_length=1)]
    tables: list[Optional[Name]]
    qmin: Int
    out_dtype: CodeDtype


class LutAttrs(Strict):
    qmin: Int
    out_dtype: CodeDtype


class SelectAttrs(Strict):
    """``Max``/``Min`` of two integer tensors: each input's codes through its table (blobs ``t0``,
    ``t1``, indexed from ``qmins[k]``) onto the output grid, then the larger or smaller, broadcast."""
    mode: Literal["max", "min"]
    qmins: Annotated[list[Int], Field(min_length=2, max_length=2)]
    out_dtype: CodeDtype
    out_shape: Shape


class LutChannelAttrs(Strict):
    """A table per element of ``shape`` (the input's rank; each axis 1 or the input's size): a
    PReLU's per-channel slope makes one code-to-code table per channel."""
    qmin: Int
    out_dtype: CodeDtype
    shape: Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(min_length=1, max_length=MAX_RANK)]


class SoftmaxAttrs(Strict):
    """``Q(softmax(DQ(q)))`` over ``axes``: blob ``table`` holds an exponential for every code difference
    from ``-(2^bits_in - 1)`` to 0, float32 for ONNX Runtime's QLinearSoftmax (8-bit codes in and out
    of one type), else float64 (``numerics_softmax.softmax_codes``)."""
    axes: Annotated[list[Annotated[int, Field(strict=True, ge=0, lt=MAX_RANK)]],
                    Field(min_length=1, max_length=MAX_RANK)]
    out_scale: Scale
    out_zp: Int
    bits: Literal[8, 16]
    signed: bool
    out_dtype: CodeDtype


class QuantizeAttrs(Strict):
    scale: Scale
    zp: Int
    dtype: CodeDtype
    round: Round
    bits: Literal[8, 16]
    signed: bool


class DequantizeAttrs(Strict):
    scale: Union[Scale, Annotated[list[Scale], Field(min_length=1)]]
    zp: Union[Int, Annotated[list[Int], Field(min_length=1)]]
    axis: Optional[Annotated[int, Field(strict=True, ge=0, lt=MAX_RANK)]]


ATTRS: dict[str, type[Strict]] = {
    "conv": ConvAttrs, "conv_transpose": ConvTransposeAttrs, "matmul": MatmulAttrs, "matmul2": Matmul2Attrs,
    "eltwise": EltwiseAttrs, "maxpool": MaxpoolAttrs, "avgpool": AvgpoolAttrs, "reshape": ReshapeAttrs,
    "transpose": TransposeAttrs, "shuffle": ShuffleAttrs, "slice": SliceAttrs, "gather": GatherAttrs, "pad": PadAttrs,
    "concat": ConcatAttrs, "split": SplitAttrs, "lut": LutAttrs, "lut_channel": LutChannelAttrs,
    "select": SelectAttrs, "softmax": SoftmaxAttrs,
    "quantize": QuantizeAttrs,
    "dequantize": DequantizeAttrs,
}


# --- subgraphs and the manifest -----------------------------------------------------------------

class Op(Strict):
    op: Literal[tuple(ATTRS)]  # type: ignore[valid-type]
    name: Name
    kind: Name
    inputs: Annotated[list[Name], Field(max_length=64)]
    outputs: Annotated[list[Name], Field(min_length=1, max_length=64)]
    attrs: dict
    blobs: dict[str, Name]
    nodes: list[Name]
    macs: Count


class Buffer(Strict):
    offset: Count
    nbytes: Count


class Plan(Strict):
    arena_bytes: Count
    total_bytes: Count
    buffers: dict[str, Buffer]


class _SubgraphBase(Strict):
    id: Count
    name: Name
    device: Name
    inputs: list[Name]
    outputs: Annotated[list[Name], Field(min_length=1)]
    op_counts: dict[str, Count]
    macs: Count
    weight_bytes: Count


class IntegerSubgraph(_SubgraphBase):
    engine: Literal["integer"]
    ops: Annotated[list[Op], Field(min_length=1)]
    memory: Plan


class OnnxSubgraph(_SubgraphBase):
    engine: Literal["onnx"]
    onnx: Name
    nodes: list[Name]


class PluginSubgraph(_SubgraphBase):
    """A subgraph a compiler plugin runs (:mod:`npuflow.plugins`): its ONNX nodes and the
    plugin's own payload; the plugin's code is never in the file."""

    engine: Literal["plugin"]
    plugin: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    onnx: Name
    payload: Optional[Name] = None
    nodes: list[Name]


#: One subgraph of a program, told apart by its engine.
Subgraph = Annotated[Union[IntegerSubgraph, OnnxSubgraph, PluginSubgraph], Field(discriminator="engine")]


class TargetInfo(Strict):
    name: Name
    fingerprint: Name
    family: str
    kind: str
    device_label: str
    scale_type: str
    spec: Optional[Target] = None  # the whole description, when compiled for a user's own target file


class ModelInfo(Strict):
    name: str
    producer: str
    metadata: dict[str, str]
    # the rest of onnxruntime's get_modelmeta (files written before they were stored lack them)
    version: int = 0
    domain: str = ""
    description: str = ""
    graph_description: str = ""


class MemoryInfo(Strict):
    weight_bytes: Count
    peak_activation_bytes: Count


class Variant(Strict):
    """A program for another input shape set (format 1.1): what depends on the shapes."""

    inputs: list[Io]
    outputs: Annotated[list[Io], Field(min_length=1)]
    subgraphs: list[dict]  # validated as a whole manifest's, below
    tensors: dict[str, Tensor]
    memory: MemoryInfo
    notes: list[str]


class Manifest(Strict):
    format: Literal["npuf"]
    npuflow_version: Name
    model: ModelInfo
    target: TargetInfo
    inputs: list[Io]
    outputs: Annotated[list[Io], Field(min_length=1)]
    subgraphs: Annotated[list[Subgraph], Field(min_length=1)]
    tensors: dict[str, Tensor]
    memory: MemoryInfo
    build_config: Optional[dict] = None
    preprocessing: Optional[dict] = None
    notes: list[str]
    blobs: dict[str, Blob]
    variants: Optional[Annotated[list[Variant], Field(min_length=1, max_length=256)]] = None
    removed: Optional[Annotated[list[RemovedNode], Field(min_length=1)]] = None


class PackedModel(Strict):
    name: Name
    manifest: dict  # validated as a whole manifest over the shared blob table, below


class PackedManifest(Strict):
    """A packed file (format 1.2, ``npuflow pack``): several models of one target, one blob table."""

    format: Literal["npuf"]
    npuflow_version: Name
    packed: Annotated[list[PackedModel], Field(min_length=1, max_length=256)]
    blobs: dict[str, Blob]


# --- entry point ---------------------------------------------------------------------------------

class SchemaError(ValueError):
    """A manifest field the schema refuses: ``field`` is its path, ``reason`` why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason
