"""The operator registry: what every ONNX op *is*, written once for every stage (issue 17 item 1).

Each stage used to keep its own op tables (the checker's kinds, the quantizer's quantized ops and
data inputs, the compiler's lowered, chain and table ops, the estimator's engines, the precision
editor's activation-unit ops) and its own tests of the same facts (depthwise, ReLU6, the fused
activation units); the copies disagreed on models nobody tuned them for.  Here, in the spirit of
NNCF's ONNX metatypes and AIMET's supergroups, one :class:`OpDef` per ONNX op says:

* ``kind``: its name in the target vocabulary (the keys of a target file's ``ops``; ``conv2d``,
  ``eltwise_add``, ``relu6`` ...), refined from the node by :func:`conv_kind`/:func:`clip_kind`;
* ``role``: compute, activation (may fuse into the op before it), layout (reinterprets a buffer)
  or follower (Q/DQ, Identity: placed with its neighbours);
* ``weight``/``bias``: the input positions of a weight (when constant) and a bias;
* ``params``: inputs that are parameters (shapes, pads, bounds), never data;
* ``scale``: which tensors share one scale (:class:`SharedScale`);
* ``quantized``: the quantizer writes quantize steps around it; ``follower``: only where its data
  input's producer is quantized (ONNX Runtime's rule for data movement);
* ``moves_data``: it computes nothing (its outputs are some of its inputs' values);
* ``lowered``: the integer compiler has a program for it; ``chain``: it may sit in the fused
  epilogue chain between a layer and its quantize step; ``table``: standalone, it is lowered as a
  lookup table;
* ``engine``: the accelerator engine the performance model charges it to.

What a *target* accelerates, fuses and quantizes stays in the target data files: :func:`fuses`
asks the target's rule and falls back to :data:`DEFAULT_FUSED` only where a target lists none.
The predicates every stage shares (:func:`is_depthwise`, :func:`clip_kind`, :func:`activation_kind`,
:func:`close`) are written once here; the activations written out as several nodes (hard-sigmoid,
hard-swish, :func:`~npuflow.activation_patterns.unit_kind`) are recognised in :mod:`npuflow.activation_patterns`.
The module imports nothing of npuflow but the target spec, so every stage may import it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import onnx
from onnx import helper

from .targets.spec import Target


class Role(str, enum.Enum):
    """How a node takes part in placement (``check``)."""

    COMPUTE = "compute"  # judged against the target's rule for its kind
    ACTIVATION = "activation"  # judged, and may fuse into the op before it
    LAYOUT = "layout"  # reshape/transpose: judged, but stays on the accelerator only next to its work
    FOLLOWER = "follower"  # Q/DQ, Identity: placed with their neighbours


class SharedScale(str, enum.Enum):
    """Which tensors of a quantized op must share one scale (``quant/plan.py``'s scale groups)."""

    NONE = "none"
    OUTPUT_IS_INPUT = "output_is_input"  # exact on integers: the output keeps the data input's scale
    ALL = "all"  # Concat: every input and the output
    INPUTS_ON_POW2 = "inputs_on_pow2"  # Add/Sub of two activations on power-of-two targets (aligned shift)


class Engine(str, enum.Enum):
    """What the performance model charges an op to (``perf/layers.py``)."""

    CONV = "conv"  # a windowed product (Conv, ConvTranspose and their QOperator forms)
    FC = "fc"  # a matrix product, run on the conv engine
    POOL = "pool"  # a windowed pool
    GLOBAL_POOL = "global_pool"  # a pool over the whole feature map
    ELTWISE = "eltwise"
    MISC = "misc"  # data movement and activations
    NONE = "none"  # reinterprets a buffer, or is folded into the neighbouring quantize step
    ZERO_COPY = "zero_copy"  # Concat: the producers write side by side into one buffer


#: The standard ONNX domains (an entry's default ``domains``).
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OpDef:
    """What one ONNX op (default domain) is; see the module docstring for each field."""

    op_type: str
    kind: str
    role: Role = Role.COMPUTE
    weight: int | None = None
    bias: int | None = None
    params: tuple[int, ...] = ()
    scale: SharedScale = SharedScale.NONE
    quantized: bool = False
    follower: bool = False
    moves_data: bool = False
    lowered: bool = False
    chain: bool = False
    table: bool = False
    engine: Engine = Engine.MISC
    axis: int | None = None  # the ONNX default of its ``axis`` attribute, where the kind reads one
    domains: tuple[str, ...] = STANDARD_DOMAINS

    def data_inputs(self, node: onnx.NodeProto) -> list[int]:
        """Positions of the inputs that carry data (every present input but the parameters)."""
        return [k for k, t in enumerate(node.input) if t and k not in self.params]

    def quantized_inputs(self, node: onnx.NodeProto) -> list[int]:
        """Inputs the quantizer writes quantize steps for: data and weight, not the bias (int32,
        its scale is the product of the others')."""
        return [k for k in self.data_inputs(node) if k != self.bias]


def _defs(*defs: OpDef) -> dict[str, OpDef]:
    return {d.op_type: d for d in defs}


_A, _L, _F = Role.ACTIVATION, Role.LAYOUT, Role.FOLLOWER


def _code_table(op_type: str, kind: str) -> OpDef:
    """A one-input activation that on an int8 input with one output scale is a function of the input
    code alone: one 256-entry table (``compiler/lowering.lower_unary``).  Quantized wherever the
    target places it, like any quantized op: quantized only between two quantized ops (the rule ELU,
    Tanh, Selu and Softplus had), one before a ``MaxPool`` or after a CPU node stayed float, and so
    did the pool (madmom's ELU TCNs, Tanh -> MaxPool, Mish's Softplus after a pool).  Which targets
    run the table is theirs to say (``HzLut`` on bernoulli2; no DPU lists one)."""
    return OpDef(op_type, kind, _A, quantized=True, table=True)
_ORT = "com.microsoft"  # ONNX Runtime's contrib ops
_IN, _ALL, _POW2 = SharedScale.OUTPUT_IS_INPUT, SharedScale.ALL, SharedScale.INPUTS_ON_POW2

#: Every op any stage distinguishes.  An op not listed is a compute op of kind ``op_type.lower()``
#: that no stage quantizes, lowers or fuses (:func:`op_def`).
REGISTRY: dict[str, OpDef] = _defs(
    # layers with weights
    OpDef("Conv", "conv2d", weight=1, bias=2, quantized=True, lowered=True, engine=Engine.CONV),
    OpDef("ConvTranspose", "transposed_conv2d", weight=1, bias=2, quantized=True, lowered=True, engine=Engine.CONV),
    OpDef("Gemm", "fc", weight=1, bias=2, quantized=True, lowered=True, engine=Engine.FC),
    OpDef("MatMul", "matmul", weight=1, quantized=True, lowered=True, engine=Engine.FC),
    OpDef("ConvInteger", "convinteger", weight=1, engine=Engine.CONV),
    OpDef("QLinearConv", "qlinearconv", weight=3, bias=8, engine=Engine.CONV),
    OpDef("MatMulInteger", "matmulinteger", weight=1, engine=Engine.FC),
    OpDef("QLinearMatMul", "qlinearmatmul", weight=3, engine=Engine.FC),
    OpDef("BatchNormalization", "batchnorm", params=(1, 2, 3, 4)),  # folded, or a 1x1 depthwise Conv
    # elementwise
    OpDef("Add", "eltwise_add", scale=_POW2, quantized=True, lowered=True, chain=True, table=True, engine=Engine.ELTWISE),
    OpDef("Sub", "eltwise_sub", scale=_POW2, quantized=True, lowered=True, chain=True, table=True, engine=Engine.ELTWISE),
    OpDef("Mul", "eltwise_mul", quantized=True, lowered=True, chain=True, table=True, engine=Engine.ELTWISE),
    OpDef("Div", "eltwise_div", chain=True, table=True, engine=Engine.ELTWISE),
    OpDef("Sum", "eltwise_add", engine=Engine.ELTWISE),
    # with a scalar constant operand (a clamp, as TensorFlow exports write one): a lookup table; of two
    # tensors (torch.maximum: corner pooling, maxout) each operand's table to the output codes, then the
    # larger / smaller code (``numerics.select_codes``)
    OpDef("Max", "max", quantized=True, lowered=True, table=True, engine=Engine.ELTWISE),
    OpDef("Min", "min", quantized=True, lowered=True, table=True, engine=Engine.ELTWISE),
    OpDef("Mean", "mean", engine=Engine.ELTWISE),
    OpDef("QLinearAdd", "qlinearadd", engine=Engine.ELTWISE, domains=(_ORT,)),
    OpDef("QLinearMul", "qlinearmul", engine=Engine.ELTWISE, domains=(_ORT,)),
    # activations
    OpDef("Relu", "relu", _A, scale=_IN, quantized=True, follower=True, chain=True, table=True),
    OpDef("Clip", "clip", _A, params=(1, 2), quantized=True, chain=True, table=True),  # kind: clip_kind
    OpDef("LeakyRelu", "leaky_relu", _A, quantized=True, chain=True, table=True),
    OpDef("HardSigmoid", "hard_sigmoid", _A, quantized=True, chain=True, table=True),
    OpDef("HardSwish", "hard_swish", _A, quantized=True, chain=True, table=True),
    _code_table("Sigmoid", "sigmoid"),
    # slope (input 1): a float constant of the quantized model, as ONNX Runtime's QDQ form keeps it;
    # lowered as one code table per slope element (``compiler/lowering.py``)
    OpDef("PRelu", "prelu", _A, params=(1,), quantized=True, lowered=True),
    _code_table("Tanh", "tanh"),
    _code_table("Elu", "elu"),
    _code_table("Selu", "selu"),
    _code_table("Softplus", "softplus"),
    _code_table("Mish", "mish"),  # opset 18's one node; torch's decomposed Mish is Softplus -> Tanh -> Mul
    # opset 20's one node; the decomposed forms are one ``gelu`` activation too (``passes/gelu.py``)
    _code_table("Gelu", "gelu"),
    OpDef("Neg", "neg", table=True),
    OpDef("Abs", "abs", table=True),
    # pooling
    OpDef("MaxPool", "max_pool", scale=_IN, quantized=True, follower=True, moves_data=True, lowered=True,
          engine=Engine.POOL),
    OpDef("AveragePool", "avg_pool", quantized=True, lowered=True, engine=Engine.POOL),
    OpDef("LpPool", "lppool", engine=Engine.POOL),
    OpDef("GlobalMaxPool", "global_max_pool", scale=_IN, quantized=True, follower=True, moves_data=True,
          lowered=True, engine=Engine.GLOBAL_POOL),
    OpDef("GlobalAveragePool", "global_avg_pool", quantized=True, lowered=True, engine=Engine.GLOBAL_POOL),
    OpDef("ReduceMax", "reduce_max", params=(1,), axis=1, engine=Engine.GLOBAL_POOL),
    OpDef("ReduceMean", "reduce_mean", params=(1,), axis=1, engine=Engine.GLOBAL_POOL),
    OpDef("ReduceSum", "reduce_sum", params=(1,), axis=1),
    # layout and data movement
    OpDef("Reshape", "reshape", _L, params=(1,), scale=_IN, quantized=True, follower=True, moves_data=True,
          lowered=True, engine=Engine.NONE),
    OpDef("Flatten", "reshape", _L, scale=_IN, quantized=True, follower=True, moves_data=True, lowered=True,
          engine=Engine.NONE),
    OpDef("Squeeze", "reshape", _L, params=(1,), scale=_IN, quantized=True, follower=True, moves_data=True,
          lowered=True, engine=Engine.NONE),
    OpDef("Unsqueeze", "reshape", _L, params=(1,), scale=_IN, quantized=True, follower=True, moves_data=True,
          lowered=True, engine=Engine.NONE),
    OpDef("Transpose", "transpose", _L, scale=_IN, quantized=True, follower=True, moves_data=True, lowered=True),
    # pixel shuffles: a transpose of blocks, exact on integer codes
    OpDef("DepthToSpace", "depth_to_space", _L, scale=_IN, quantized=True, follower=True, moves_data=True,
          lowered=True),
    OpDef("SpaceToDepth", "space_to_depth", _L, scale=_IN, quantized=True, follower=True, moves_data=True,
          lowered=True),
    OpDef("Slice", "strided_slice", params=(1, 2, 3, 4), scale=_IN, quantized=True, follower=True,
          moves_data=True, lowered=True),
    OpDef("Split", "split", params=(1,), scale=_IN, quantized=True, follower=True, moves_data=True, lowered=True,
          axis=0),
    OpDef("Pad", "pad", params=(1, 2, 3), scale=_IN, quantized=True, follower=True, moves_data=True, lowered=True),
    OpDef("Concat", "concat", scale=_ALL, quantized=True, moves_data=True, lowered=True, engine=Engine.ZERO_COPY,
          axis=1),
    OpDef("Resize", "resize", params=(1, 2, 3), quantized=True, follower=True, moves_data=True, lowered=True),
    OpDef("Upsample", "resize", params=(1,)),
    OpDef("Expand", "expand", params=(1,)),
    OpDef("Tile", "tile", params=(1,)),
    OpDef("TopK", "topk", params=(1,)),
    OpDef("Gather", "gather", engine=Engine.NONE),
    OpDef("Softmax", "softmax", axis=-1, lowered=True),  # between two quantize steps (lowering.lower_softmax)
    OpDef("ArgMax", "argmax", axis=0),
    # followers, shape arithmetic and quantize steps
    OpDef("Identity", "identity", _F, table=True, engine=Engine.NONE),
    OpDef("Dropout", "identity", _F, engine=Engine.NONE),
    OpDef("QuantizeLinear", "quantize", _F, params=(1, 2), engine=Engine.NONE, domains=(*STANDARD_DOMAINS, _ORT)),
    OpDef("DequantizeLinear", "dequantize", _F, params=(1, 2), engine=Engine.NONE, domains=(*STANDARD_DOMAINS, _ORT)),
    OpDef("DynamicQuantizeLinear", "quantize", _F),  # computes its range: work, unlike a fixed quantize step
    OpDef("Shape", "shape", engine=Engine.NONE),
    OpDef("Size", "size", engine=Engine.NONE),
    OpDef("Constant", "constant", engine=Engine.NONE),
    OpDef("Cast", "cast", engine=Engine.NONE),
    OpDef("ConstantOfShape", "constantofshape", params=(0,), engine=Engine.NONE),
    OpDef("Range", "range", params=(0, 1, 2), engine=Engine.NONE),
)

#: Ops the quantizer may quantize (float data in and out, on the accelerator).
QUANTIZED_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.quantized)
#: Ops whose input ``weight`` is a weight of a layer the quantizer quantizes (per channel where allowed).
WEIGHTED_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.quantized and d.weight is not None)
#: Ops with an integer lowering (the keys of ``compiler.lowering.LOWERINGS``).
LOWERED_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.lowered)
#: Elementwise float ops the epilogue of a layer may hold (its fused activation chain).
CHAIN_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.chain)
#: Elementwise ops lowered as a lookup table when they stand alone between DQ and Q.
TABLE_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.table)
#: Ops whose output takes the input's scale (exact on integers).
PASS_THROUGH = frozenset(d.op_type for d in REGISTRY.values() if d.scale is SharedScale.OUTPUT_IS_INPUT)
#: Ops quantized only when their data input comes from a quantized op.
FOLLOWERS = frozenset(d.op_type for d in REGISTRY.values() if d.follower)
#: Ops that compute nothing: their outputs are some of their inputs' values.
DATA_MOVEMENT = frozenset(d.op_type for d in REGISTRY.values() if d.moves_data)
#: Ops whose only job is shape arithmetic; with all-static shapes they are usually folded away.
SHAPE_OPS = frozenset({"Shape", "Size"})
#: Ops whose outputs are not a function of their inputs: never evaluated at build time.
NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                                  "Multinomial", "Bernoulli"})
#: Ops whose operands must agree in size (broadcasting, or every axis but a Concat's): a constant
#: operand of one of them with the old size of a resized input dimension holds that size.
SIZE_JOINING_OPS = frozenset({"Concat", "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min"})
#: Ops that make a tensor of a constant shape from constant inputs (a traced size baked in).
SHAPE_MAKING_OPS = frozenset({"Expand", "Tile", "ConstantOfShape", "Range"})
#: Ops that only give a reduced tensor its reduced (size-1) axes back or broadcast it: how a
#: reduced mean returns to its input's shape (the LayerNorm variance pass follows them).
BROADCAST_BACK_OPS = frozenset({"Reshape", "Unsqueeze", "Expand"})
#: Single-input ops whose outputs lie on their (per-tensor) input's quantization grid, so a
#: quantize step with the input's parameters after them is exact (``check/lowerable.grid_step``).
GRID_OPS = frozenset({"MaxPool", "Relu", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
#: Ops between a model input and its first convolution that keep the channel count (a scaling, a
#: mean subtracted, a cast): ``input_shapes`` looks through them for the channels a Conv takes.
CHANNEL_KEEPING_OPS = frozenset({"Cast", "Identity", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Neg",
                                 "Abs"})
#: Ops that only move or select values: each output value is one of their inputs' values, so they
#: run unchanged on integer codes (a QOperator model applies them to quantized tensors directly).
VALUE_MOVING_OPS = GRID_OPS | frozenset({"GlobalMaxPool", "Slice", "Split", "Concat", "Gather", "Identity", "Tile",
                                         "Expand", "DepthToSpace", "SpaceToDepth"})
#: Ops each of whose outputs holds its data inputs' values unchanged (some repeated, some left
#: out: ``Slice``, ``Gather``; a ``Pad``'s fill or a ``Concat``'s other inputs added beside them):
#: a graph input that reaches a quantize step through them is clipped there as if it fed the step
#: itself (``compile`` records the step for the run-time coverage count, ``runtime/coverage.py``).
VALUE_KEEPING_OPS = VALUE_MOVING_OPS - {"MaxPool", "GlobalMaxPool", "Relu"} | {"Pad"}
#: Ops whose every input is data (the others' data input is their first; the rest are indices,
#: shapes, pads).
ALL_DATA_INPUT_OPS = frozenset({"Concat"})
#: Ops whose output lies in a fixed interval whatever the input: their quantized output takes
#: that interval, not the calibrated one.  A sigmoid calibrated on inputs it never fires on
#: (openWakeWord's classifiers on speech without the wake word: outputs below 5e-4) otherwise
#: clips every later detection to that tiny maximum (TFLite fixes its int8 sigmoid to 1/256 too).
FIXED_OUTPUT_RANGE: dict[str, tuple[float, float]] = {"Sigmoid": (0.0, 1.0)}
#: Ops with a fixed output interval whose output saturates on its grid past an input of +-L
#: (``SATURATION_INPUT[op](bits)``: L where the output is within half a step of its limit).  Their
#: input's quantized range, calibrated on one sign only, reaches past zero by ``min(L, other side)``
#: (``quant/assign.py``): a logit calibrated only negative -- a detector calibrated on data
#: without the event -- otherwise gets the range [min, 0] on an asymmetric (uint8) grid, and the
#: probability stops at 0.5, the threshold it is compared with.
SATURATION_INPUT: dict[str, Callable[[int], float]] = {"Sigmoid": lambda bits: math.log(2.0 ** (bits + 1) - 3.0)}
#: Standard ops that compute each output element from the same element of their inputs only.
ELEMENTWISE_OPS = frozenset({
    "DequantizeLinear", "QuantizeLinear", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Selu", "Exp", "Log", "Abs",
    "Neg", "Sqrt", "Reciprocal", "Erf", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Mish", "Clip", "Add",
    "Sub", "Mul", "Div", "Pow", "Min", "Max", "Floor", "Ceil", "Round", "Sign", "Cast", "Identity", "Where", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "Equal", "Not", "And", "Or", "Constant"})
#: Standard elementwise ops whose inputs broadcast against each other (multidirectional broadcasting):
#: ONNX Runtime runs them through one broadcast helper (``runtime/broadcast.py``).
BROADCAST_ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Where", "Less", "Greater",
                                       "LessOrEqual", "GreaterOrEqual", "Equal", "And", "Or", "Xor", "Mod", "PRelu"})
#: Standard ops whose output is boolean (comparisons, logic, tests): a ``Cast`` of one to float holds 0 and 1 only.
BOOLEAN_OUTPUT_OPS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                                "IsNaN", "IsInf"})
#: Layout ops whose effect is a permutation of axes or the removal/insertion of size-1 axes (no data moves
#: but for the permutation): a channels-last export's transposes and batch squeezes (:mod:`npuflow.passes.layout_sandwich`).
AXIS_LAYOUT_OPS = frozenset({"Transpose", "Squeeze", "Unsqueeze"})
#: Ops whose output is a fixed linear function of their data input (a selection, a reshuffle or an
#: interpolation with weights that do not depend on the values), so ``op(-x) = -op(x)``: a Sub's subtrahend
#: read through them from a layer is negated in the layer (:mod:`npuflow.passes.target_rewrites`, N-HiTS'
#: backcast ``Resize(Slice(Gemm))``, round 28e).  A ``Resize`` in ``tf_crop_and_resize`` mode is not (its
#: extrapolation value is a constant).
NEGATION_COMMUTING_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice",
                                    "Resize", "Upsample"})
#: :data:`ELEMENTWISE_OPS` that map float to float element by element and so commute with any layout op
#: (quantize/dequantize, casts, comparisons and selections left out).
LAYOUT_COMMUTING_OPS = ELEMENTWISE_OPS - {
    "DequantizeLinear", "QuantizeLinear", "Constant", "Identity", "Cast", "Where", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Equal", "Not", "And", "Or"}
#: Ops whose output needs its input's *relative* precision: ``Log`` gives every decade of its input
#: the same output span, and an 8-bit linear grid has none below one step (every value more than
#: ~48 dB under the calibrated maximum reads 0, and ``Log(0)`` is -inf).  openWakeWord's mel front
#: end read output cosine 0.84 on cpu-int8, B4096 and bernoulli2; with the ops feeding its Log in float, 1.0000
#: (benchmarks/results/newuser_flows2.md).  Sqrt and Reciprocal are left out: in a LayerNorm they
#: read a variance whose 8-bit range is adequate, and no model here measured a loss there.
RELATIVE_PRECISION_OPS = frozenset({"Log"})
#: Periodic ops: their output needs its input's *absolute* precision over a range many periods
#: wide.  A positional encoding ``sin(p * 2**k * pi)`` reads a phase up to ~100 rad, and an 8-bit
#: grid of that range steps 0.8 rad, so the sine is noise (new-user round 15's NeRF MLP: density
#: cosine 0.955 on cpu-int8 with the phase quantized; B4096 and bernoulli2 kept it float).  Their
#: input cone stays float as a :data:`RELATIVE_PRECISION_OPS` op's does, through
#: :data:`PHASE_CARRYING_OPS` only.
PERIODIC_OPS = frozenset({"Sin", "Cos"})
#: Ops that build a phase from positions and frequencies (scale, shift, outer product, layout,
#: the ``cat(freqs, freqs)`` of a rotary embedding).  A :data:`PERIODIC_OPS` cone stops at any
#: other op: a Conv -> Relu -> Sin keeps its 8-bit grid, whose range is what the Relu gives.
PHASE_CARRYING_OPS = frozenset({
    "Mul", "Div", "Add", "Sub", "Neg", "MatMul", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Transpose", "Identity"})
#: Ops that pass a wide-range (power-like) quantity on without squashing its range: linear maps,
#: sums, products, powers, clamps and layout.  The float input cone of a :data:`RELATIVE_PRECISION_OPS`
#: or :data:`PERIODIC_OPS` op extends back through them (:mod:`npuflow.check.cone`); an op
#: that squashes a range (Sigmoid, Tanh, Softmax, a normalisation) ends it.
RANGE_CARRYING_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Pow", "Abs", "Clip", "Max", "Relu", "ReduceSum",
    "ReduceMean", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
#: The input whose value an op writes into its output beside its data (``Pad``'s ``constant_value``:
#: ``F.pad(x, ..., value=-inf)`` before a shifted maximum, CornerNet's corner pooling), by op type.
FILL_INPUT: dict[str, int] = {"Pad": 2}
#: Ops whose result drops a ``-inf`` operand, by whether they do so alone (``Relu``: 0; ``MaxPool``: a
#: window holds real values beside a TF-style ``-inf`` pad) or only beside another, finite operand
#: (``Max``): a ``-inf`` fill does not pass through them.
NEG_INF_DROPPING_OPS: dict[str, bool] = {"Relu": True, "MaxPool": True, "Max": False}
#: Ops whose constant operand only makes them a clamp, one lookup table with the bound in float (their
#: own lowering, of two tensors, reads no constant): the quantizer leaves the bound float.
CLAMP_OPS = frozenset({"Max", "Min"})
#: Ops the quantizer never quantizes on their own that the compiler lowers only straight from a
#: dequantize step to a quantize step, not as a table a chain of elementwise ops runs through:
#: a ``Softmax`` (its row's sum), as ``compiler/lowering.lower_softmax`` reads it.
STEP_BOUND_OPS = frozenset({"Softmax"})
#: One-input ops that keep the order of their input (monotone non-decreasing): a quantize step after
#: them keeps it too, so ``Q(f(max(a, b))) = max(Q(f(a)), Q(f(b)))`` (a two-tensor ``Max``'s tables).
ORDER_KEEPING_OPS = frozenset({"Sigmoid", "Tanh", "Relu", "LeakyRelu", "Clip", "HardSigmoid", "Identity"})
#: A peak test: ``Compare(MaxPool(t), t)`` keeps the elements of ``t`` that equal the largest of
#: their window (CenterNet's heatmap NMS, ``maxpool(h) == h``).  On an 8-bit grid neighbouring
#: scores round to the same code and tie, so extra peaks survive (round 14's CenterNet head:
#: heatmap cosine 0.52-0.85 on cpu-int8, B4096, bernoulli2), and a monotone op after the grid
#: (``Sigmoid`` of an 8-bit logit) keeps the ties.  ``compare``: the comparisons; ``window``: the
#: ops taking the largest of a neighbourhood; ``monotone``: one-input ops that keep the order of
#: their input, which the float cone of the test extends back through (with :data:`GRID_OPS`)
#: to the layer computing ``t`` (:func:`npuflow.check.cone.peak_test_cones`).
PEAK_TEST_OPS: dict[str, frozenset[str]] = {
    "compare": frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}),
    "window": frozenset({"MaxPool"}),
    "monotone": ORDER_KEEPING_OPS}
#: A classifier's head, recognised by its structure where no name or softmax says what an output is
#: (torch's default output names: BC-ResNet's ``345``, the dynamo exporter's ``mean_6``):
#: ``layer``, the linear layers class scores come from (a Conv only with a 1x1 kernel); ``after``,
#: ops between it and the output that keep the scores linear in it and bring them to ``(N, K)``
#: (an ``Add`` only of a constant bias).  An activation, a normalisation (a ``Div`` by the L2 norm of
#: an embedding) or a softmax ends the walk: no head.
CLASS_HEAD_OPS: dict[str, frozenset[str]] = {
    "layer": frozenset({"Gemm", "MatMul", "Conv"}),
    "after": frozenset({"Add", "Flatten", "Reshape", "Squeeze", "Identity", "ReduceMean", "GlobalAveragePool"})}
#: Ops float passes rewrite into lowered ones before quantization (BN: folded, or a 1x1 depthwise Conv).
#: Ops whose output holds counts when every non-constant input does (sums and rearrangements of a
#: ``Cast`` of booleans or integers: a classifier's votes), which ``passes/reduce_sum.py`` leaves unquantized.
COUNT_KEEPING_OPS = frozenset({"Concat", "ReduceSum", "Add", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                               "Slice", "Identity"})
#: The input an op divides by: a quantize step on it can round a small non-zero divisor (``x / (s + eps)``)
#: to exactly 0, an infinity or NaN in the quantized model (:mod:`npuflow.quant.divisors`).
DIVISOR_INPUT = {"Div": 1, "Reciprocal": 0}
REWRITTEN_OPS = frozenset({"BatchNormalization"})
#: Standard quantize / dequantize steps (npuflow's rounding-mode functions are ``npuflow.qdq``'s).
QUANTIZE_OPS = frozenset({"QuantizeLinear"})
DEQUANTIZE_OPS = frozenset({"DequantizeLinear"})
QDQ_OPS = QUANTIZE_OPS | DEQUANTIZE_OPS | {"DynamicQuantizeLinear"}
#: Ops a constant scale/shift (or a BatchNormalization) after them folds into: their weights and bias.
FOLDS_INTO = frozenset({"Conv", "ConvTranspose", "Gemm"})
#: Producers whose elementwise readers ONNX Runtime's optimiser may fold into them (a ``Mul`` by a
#: constant into a convolution's weights): a rewrite that changes such a reader's constant could
#: change whether it folds, so ``runtime/broadcast.py`` leaves those readers alone.
FOLDING_PRODUCERS = FOLDS_INTO | {"MatMul", "BatchNormalization"}
#: A reduction over spatial axes and the (global, windowed) pool that computes it.
REDUCTION_POOLS = {"ReduceMean": ("GlobalAveragePool", "AveragePool"), "ReduceMax": ("GlobalMaxPool", "MaxPool")}

#: Target kinds that are layers with weights: they absorb a following BN / bias ``Add`` and
#: take the default fused activations.
WEIGHTED_KINDS = frozenset({"conv2d", "depthwise_conv2d", "transposed_conv2d", "depthwise_transposed_conv2d", "fc"})
#: Kinds of activations an accelerator may run inside the op before them (what targets' ``activations`` list).
FUSABLE_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "hard_sigmoid", "hard_swish")
#: Activations fused into weighted kinds on targets whose rules list none (ONNX Runtime's QDQ fusions).
DEFAULT_FUSED = ("relu", "relu6")
#: Kinds of the ops that only reinterpret a buffer (placement role ``layout``).
LAYOUT_KINDS = frozenset(d.kind for d in REGISTRY.values() if d.role is Role.LAYOUT)
#: Kinds of activations (placement role ``activation``); ``clip``/``silu`` come from :func:`clip_kind`
#: and from the decomposed patterns the checker recognises.
ACTIVATION_KINDS = frozenset({d.kind for d in REGISTRY.values() if d.role is Role.ACTIVATION} | {"relu6", "silu"})

#: Ops an activation unit the quantizer writes between a layer and its quantize step is made of
#: (ReLU, ReLU6, LeakyReLU, the legalised hard-sigmoid / hard-swish chains), and its most nodes
#: (a legalised hard-swish: ``Add, Clip, Mul, Mul``).
UNIT_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Add", "Mul"})
MAX_UNIT_NODES = 4

#: A PReLU is lowered as one code table per slope element (``compiler/lowering.py``: 256 entries at
#: 8 bits); beyond this many slopes (1 MiB of tables) it runs in float on the CPU instead.  Keras'
#: default PReLU has a slope per element (MEGnet's 120x120x25: 92 MB of tables, the ``.npuf`` 15x the model).
PRELU_MAX_SLOPES = 4096

#: The standard hard-sigmoid ``max(0, min(1, x/6 + 1/2))`` = ``relu6(x + 3) / 6``.
HSIGMOID_ALPHA, HSIGMOID_BETA, HSIGMOID_OFFSET, HSIGMOID_DIVISOR = 1.0 / 6.0, 0.5, 3.0, 6.0
#: The DPU's hard-sigmoid multiplier: 2731 / 2**14, the 14-bit fixed-point value nearest 1/6.
DPU_HSIGMOID_SCALE = 2731.0 / 16384.0
#: Relative tolerance for the constants of decomposed activation patterns (float32 holds 1/6 to 3e-8).
PATTERN_TOL = 1e-6

#: ONNX Runtime's QOperator ops with constant weights: op type -> (weight input, its zero point
#: input); each reads its activation's zero point at input 2.
QOPERATOR_WEIGHT_INPUTS = {"QLinearConv": (3, 5), "QLinearMatMul": (3, 5), "ConvInteger": (1, 3),
                           "MatMulInteger": (1, 3)}

#: Integer ops of ONNX Runtime's QOperator and dynamic quantization formats besides ``QLinear*``
#: (:func:`is_integer_format_op`): a model holding one is already quantized.
INTEGER_FORMAT_OPS = frozenset(QOPERATOR_WEIGHT_INPUTS) | {"QGemm", "QAttention", "DynamicQuantizeMatMul",
                                                            "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}


def is_integer_format_op(op_type: str) -> bool:
    """An op of an already quantized model's integer form (``QLinearConv``, ``QGemm``,
    ``ConvInteger``, ``MatMulInteger``, ...), Q/DQ steps aside (``graph.is_qdq``)."""
    return op_type.startswith("QLinear") or op_type in INTEGER_FORMAT_OPS


#: Float ops whose input 1, read from a ``DequantizeLinear``, ONNX Runtime fuses into an integer
#: kernel as its weights (``QLinearConv``, ``QLinearMatMul``, ``MatMulIntegerToFloat``, ...):
#: op type -> that input.
QDQ_WEIGHT_READERS = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}

#: Ops that move a tensor's values without computing on them, across which ONNX Runtime moves a
#: ``DequantizeLinear`` (``QDQPropagationTransformer``) onto the op that reads them.
DQ_PROPAGATING_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
#: Data movement ONNX Runtime may cancel or move across the seam of two graphs joined into one session
#: (the layout ``Transpose`` after a channels-last ``QLinearConv``): the same values, not a kernel
#: that counts when the joined graph's kernels are compared with the parts' (``runtime/joined.py``; PP-OCR
#: cls on B4096: the two ``Squeeze`` of its fused run's output, which the joined graph's optimiser removes).
SEAM_MOVES = frozenset({"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"})
#: ONNX Runtime's blocked-channel (NCHWc) kernels that its full optimisation level writes for a plain op
#: (``NchwcTransformer``) and that give each value the plain kernel gives, by ``(domain, op_type)`` -> the
#: plain op: a max selects one value of its window in any layout (no arithmetic, so no other rounding).
#: ``runtime/joined.py`` counts them as the plain op when it compares the kernels of a CPU part that runs at
#: the basic level with the full level's (MTCNN's ``PRelu -> MaxPool`` between convolutions on B4096).
NCHWC_SAME_VALUES = {("com.microsoft.nchwc", "MaxPool"): ("", "MaxPool"),
                     ("com.microsoft.nchwc", "GlobalMaxPool"): ("", "GlobalMaxPool")}
#: The NCHWc transformer's layout conversions: they move values between NCHW and the blocked layout.
NCHWC_MOVES = frozenset({("com.microsoft.nchwc", "ReorderInput"), ("com.microsoft.nchwc", "ReorderOutput")})
#: Ops whose output has the element type of one of their inputs (the values they move, select or add in
#: one type; a QOperator's output zero point), by ``(domain, op_type)`` -> that input: ``runtime/joined_seams``
#: follows a seam tensor back to the node that made its bytes to know they are uint8 (``com.microsoft``'s
#: ``QLinearAdd``/``QLinearMul`` bind A, B and C to one type; a table's ``Gather`` has its table's).
OUTPUT_TYPE_OF_INPUT = {**{("", op): 0 for op in ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten",
                                                  "Gather", "GatherElements", "Slice", "Concat", "Split")},
                        ("com.microsoft", "QLinearAdd"): 0, ("com.microsoft", "QLinearMul"): 0,
                        ("", "QLinearConv"): 7, ("com.microsoft", "QLinearConv"): 7, ("", "QuantizeLinear"): 2}
#: Attributes an op gained at a later opset whose default keeps its earlier meaning, with that default: a node
#: of the earlier opset (which cannot set it) means the same there (``runtime/joined``: PP-OCR cls's opset-13
#: ``Reshape`` in an opset-18 joined graph; ``allowzero`` 0 copies a 0 dimension, as opset 13 always did).
ADDED_KEEPING_MEANING = {("", "Reshape", "allowzero"): 0}
#: Optional inputs an op gained at a later opset, after its others, whose absence keeps its earlier meaning:
#: a node of the earlier opset (which has no such input) means the same there (``runtime/joined``:
#: openWakeWord's opset-13 ``Pad`` in an opset-18 joined graph; without ``axes`` every axis is padded).
ADDED_INPUTS_KEEPING_MEANING = frozenset({("", "Pad", "axes")})
#: Ops with a shape operand (its input index) equal to the shape of their output (``perf/cpu_time.py``
#: feeds such an operand, when it comes from outside a timed CPU part, the node's declared output shape).
SHAPE_OPERAND_INPUT = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0}

#: AMD Quark's quantization ops (``quark.onnx``'s custom-op domain) -> the number format they write.
#: ONNX Runtime cannot run them without Quark's library and no target's integer engine runs block
#: floating point, microscaling or bfloat16/float16 "quantization", so a model that holds them is
#: named as Quark's format rather than as an unregistered custom op (``model.py``).
QUARK_DOMAIN = "com.amd.quark"
QUARK_QUANT_OPS = {"BFPQuantizeDequantize": "block floating point (BFP)", "MXQuantizeDequantize": "microscaling (MX)",
                   "ExtendedQuantizeLinear": "Quark's extended quantize",
                   "ExtendedDequantizeLinear": "Quark's extended dequantize"}

#: Elementwise ops a layer's fused activation chain may hold for reconstruction after the
#: activation (``quant/algorithms/activation.py``; ONNX semantics, float inputs).
RECONSTRUCTED_ACTIVATION_OPS = ("Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
                                "LeakyRelu")


def op_def(op_type: str, domain: str = "") -> OpDef:
    """The registry entry of an op; an op not listed (or of another domain) computes, unnamed
    by the target vocabulary but for its lower-cased type, and no stage quantizes or lowers it."""
    d = REGISTRY.get(op_type)
    if d is not None and domain in d.domains:
        return d
    return OpDef(op_type, op_type.lower(), domains=(domain,))


def is_depthwise(group: int, in_channels: int | None) -> bool:
    """A grouped convolution with one input channel per group (any channel multiplier).

    One test for every stage: the checker judged ``group == input channels`` where the float
    passes tested ``weight.shape[1] == 1`` (no answer for a weight computed at run time) and the
    compiler additionally demanded one output channel per group of a transposed convolution; the
    compiler places by the checker's verdict, so the checker's test is the one kept.
    """
    return group > 1 and in_channels is not None and group == in_channels


def conv_kind(transposed: bool, depthwise: bool) -> str:
    """Target kind of a (transposed) convolution."""
    base = "transposed_conv2d" if transposed else "conv2d"
    return f"depthwise_{base}" if depthwise else base


def conv_in_channels(node: onnx.NodeProto, x_shape: Sequence[int] | None, w_shape: Sequence[int] | None) -> int | None:
    """Input channels of a Conv/ConvTranspose: from the data's shape, else from the weight's."""
    if x_shape and len(x_shape) >= 2 and isinstance(x_shape[1], int) and x_shape[1] > 0:
        return int(x_shape[1])
    if not w_shape:
        return None
    if node.op_type == "ConvTranspose":
        return int(w_shape[0])
    return int(w_shape[1]) * int(node_attr(node, "group", 1)) if len(w_shape) > 1 else None


def clip_kind(lo: float | None, hi: float | None) -> str:
    """``relu6`` for exactly [0, 6], ``relu`` for [0, inf), else ``clip``.

    Exact, not within a tolerance: a Clip to [0, 6.0001] is not what an accelerator's ReLU6
    computes, and the checker, which places it, only fuses exact bounds; the quantizer and the
    float passes now ask the same test, so neither fuses a clip the checker judges alone.
    """
    if lo == 0 and hi == 6:
        return "relu6"
    if lo == 0 and (hi is None or math.isinf(hi)):
        return "relu"
    return "clip"


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value (strings and lists of strings decoded: one reading of ``b"NOTSET"``
    and ``"NOTSET"`` for every stage; bytes that are not UTF-8 read as U+FFFD rather than fail),
    or ``default``.  Stages import it as :func:`npuflow.graph.attr`."""
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                return v.decode(errors="replace")
            if isinstance(v, list):
                return [x.decode(errors="replace") if isinstance(x, bytes) else x for x in v]
            return v
    return default


def clip_bounds(node: onnx.NodeProto, scalar: Callable[[str], float | None]) -> tuple[float | None, float | None]:
    """``(min, max)`` of a Clip from its inputs (opset >= 11) or attributes; ``scalar(name)`` is the
    graph's value of a scalar constant (``None`` when not constant)."""
    lo = scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else node_attr(node, "min")
    hi = scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else node_attr(node, "max")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def activation_kind(node: onnx.NodeProto, scalar: Callable[[str], float | None]) -> str | None:
    """Target kind of a single-node activation (``clip`` for a Clip that is neither ReLU nor
    ReLU6), or ``None`` when the node is no activation."""
    d = op_def(node.op_type, node.domain)
    if d.role is not Role.ACTIVATION:
        return None
    if node.op_type == "Clip":
        return clip_kind(*clip_bounds(node, scalar))
    return d.kind


def close(value: float | None, expected: float) -> bool:
    """A pattern constant equal to ``expected`` up to float32 storage (:data:`PATTERN_TOL`)."""
    return value is not None and abs(value - expected) <= PATTERN_TOL * max(1.0, abs(expected))


def fuses(target: Target, op_kind: str | None, activation: str | None) -> bool:
    """Whether ``target`` runs ``activation`` inside an op of kind ``op_kind`` (no quantize step
    between): the target's rule decides where it lists activations; elsewhere weighted layers
    take :data:`DEFAULT_FUSED`."""
    if op_kind is None or activation is None:
        return False
    rule = target.rule(op_kind)
    if rule is not None and rule.activations:
        return activation in rule.activations
    return op_kind in WEIGHTED_KINDS and activation in DEFAULT_FUSED


def op_types(defs: Iterable[OpDef]) -> frozenset[str]:
    """The op types of some registry entries (for tests and reports)."""
    return frozenset(d.op_type for d in defs)


def softmax_axes(node: onnx.NodeProto, rank: int, opset: int) -> tuple[int, ...]:
    """The axes a ``Softmax`` normalises over: its one ``axis`` from opset 13 on (default -1);
    before, every axis from ``axis`` (default 1) on, as the input flattened to 2-D there."""
    if opset >= 13:
        return (int(node_attr(node, "axis", -1)) % rank,)
    return tuple(range(int(node_attr(node, "axis", 1)) % rank, rank))
