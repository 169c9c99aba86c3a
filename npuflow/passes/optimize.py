"""The float optimisation pipeline run before calibration (``optimized_float_model.onnx``).

Order matters: constants are folded first (BN parameters and pattern constants become
initializers), no-op nodes go, a batched-matrix-product ``Einsum`` becomes
``Transpose``/``MatMul`` (:mod:`.einsum`), a LayerNorm written out node by node one
``LayerNormalization`` (:mod:`.layer_norm`: ConvNeXt's channels-first one between two ``Transpose``), and additions of products by an all-zero constant (a recurrence's
zero initial state, :mod:`.zero_terms`), a decomposed PReLU becomes one ``PRelu``/``LeakyRelu``
(:mod:`.prelu`: tf2onnx's Keras PReLU), BatchNorms and per-channel constant scales/shifts fold into
their producers (then a depth-1 3-D convolution or BN on a depth-1 map becomes a 2-D one, :mod:`.conv3d`;
a BN that cannot fold becomes a 1x1 depthwise convolution), a bilinear ``Resize`` by 2, 4
(or 8) becomes edge extension and a depthwise ``ConvTranspose`` (:mod:`.resize_linear`, where the target
runs that transposed convolution), a ``Split`` the target rejects as one ``Slice`` per part where it runs
slices (:mod:`.split_slices`: DPUCZDX8G has no split), then 1-D pooling and
transposed convolutions become 2-D ones with H = 1 (:mod:`.ops_1d`, as the compiler runs 1-D
convolutions), a linear layer's bias after a ``MatMul`` becomes a 1-D second input of its ``Add``
and a bias several layers read is copied per layer (:mod:`.linear_bias`), then decomposed
activations become single nodes and every decomposed GELU the one chain the compiler lowers as a
table (:mod:`.gelu`), and a LayerNorm's one-pass variance ``E[x^2] - E[x]^2`` the mean of squared
deviations (:mod:`.variance`).  For an accelerator target, a constant scale/shift after an
activation folds forward into the layer reading it (:mod:`.fold_affine_forward`: PP-LCNetV3's
affine blocks).  Given a target, the target rewrites come last (:mod:`.target_rewrites`: a
HardSigmoid's parameters folded into its producing layer, a GlobalAveragePool over a map larger
than the target's pooling window split in two, a whole-axis AveragePool too wide for it
cascaded), only where the target's rules reject the node as it is.  Every step keeps results
within float rounding (tested <= 1e-5 relative).

The order is written once, in :data:`FLOAT_PASSES`: ``check`` of a float model runs the steps marked
``check`` (those that can change where a node runs), in the same order, so what check places on the
accelerator is what ``compile`` lowers; the value-preserving folds it sees through (BatchNorm folds,
bias forms, activation patterns, GELU chains) are ``optimize_float``'s only.  A constant scale/shift
folded into the layer before is judged folded: a HardSigmoid after a bias ``Add`` reads the layer once
it folds, and the target rewrite folds the HardSigmoid's parameters there (PP-OCR mobile v2.0 cls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from ..graph import GraphView
from ..model import infer_static_shapes
from ..targets import Target
from .activations import fuse_activation_patterns
from .branch_softmax import two_way_softmax_as_sigmoid
from .const_left_matmul import const_left_matmuls_as_right
from .einsum import einsums_as_matmul
from .fold_affine import fold_affine, fold_linear_affine
from .fold_affine_forward import fold_affine_forward
from .fold_batchnorm import batchnorm_to_depthwise, fold_batchnorm
from .fold_constants import fold_constants
from .gather_slice import gathers_as_slices
from .gelu import canonical_gelus
from .head_matmul import head_matmuls_as_2d
from .layer_norm import layer_norms
from .layout_sandwich import cancel_layout_sandwiches
from .linear_bias import canonical_linear_biases, untie_shared_biases
from .maxpool_indices import maxpool_indices_apart
from .conv3d import depth1_conv3d_as_2d
from .ops_1d import ops_1d_as_2d
from .prelu import fold_prelu
from .reduce_sum import short_sums_as_adds
from .remove_identity import remove_identity
from .resize_linear import linear_resizes_as_conv_transpose
from .split_slices import splits_as_slices
from .target_rewrites import Rewrite, target_rewrites
from .unit_transpose import unit_axis_transposes_as_reshape
from .variance import stable_variances
from .zero_terms import drop_zero_terms


#: a float pass as the sequence calls it: the model, the target (``None``: none given) and the list the
#: target-dependent rewrites report to (``None``: nobody keeps one)
Step = Callable[[onnx.ModelProto, Target | None, list[Rewrite] | None], onnx.ModelProto]


@dataclass(frozen=True)
class FloatPass:
    """One step of the float passes.  ``check``: the step can change where a node runs (op types, node
    splits or merges the target's rules judge), so check of a float model applies it too; ``optimize``:
    ``optimize_float`` applies it (all but the static shapes check's judge reads)."""

    name: str
    run: Step
    check: bool
    optimize: bool = True
    #: ``run`` also takes ``static_inputs=``: the input shape a dynamic graph is judged at (see :func:`optimize_float`)
    sized: bool = False


def accelerator_forward_folds(model: onnx.ModelProto, target: Target | None) -> onnx.ModelProto:
    """On an accelerator target, a constant scale/shift after an activation folded forward into the
    layer reading it (one requantisation instead of three per affine block); ``check`` of a float
    model judges the same graph (its step reads this module attribute, which benchmarks replace)."""
    return fold_affine_forward(model) if target is not None and target.kind == "npu" else model


def _target_rewrites(model: onnx.ModelProto, target: Target | None, rewrites: list[Rewrite] | None,
                     static_inputs: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Last: compile places the rewritten nodes; what they changed or left goes to ``rewrites``."""
    if target is None:
        return model
    model, done = target_rewrites(model, target, static_inputs)
    if rewrites is not None:
        rewrites.extend(done)
    return model


#: The float passes in order, written once for ``optimize_float`` and check's ``prepare``.
FLOAT_PASSES: tuple[FloatPass, ...] = (
    FloatPass("fold_constants", lambda m, t, r: fold_constants(m), check=True),
    FloatPass("einsums_as_matmul", lambda m, t, r: einsums_as_matmul(m), check=True),
    # check too: ENet's pools with indices ran whole on the CPU, their pooled values with them
    FloatPass("maxpool_indices_apart", lambda m, t, r: maxpool_indices_apart(m), check=True),
    # check too: a HardSigmoid(0.2, 0.5) behind paddle2onnx's Identity read no layer, so its target rewrite was
    # left and check put it on the CPU where compile ran it on the DPU (PP-OCRv6 det, round 26b)
    FloatPass("remove_identity", lambda m, t, r: remove_identity(m), check=True),
    FloatPass("drop_zero_terms", lambda m, t, r: drop_zero_terms(m), check=False),
    FloatPass("fold_prelu", lambda m, t, r: fold_prelu(m), check=True),
    # after it (a PReLU's branches sit between transposes); check too: a channels-last activation between a
    # transpose pair and its inverse ran in float on the CPU, cut off from its layer (madmom's TCN)
    FloatPass("cancel_layout_sandwiches", lambda m, t, r: cancel_layout_sandwiches(m), check=True),
    FloatPass("two_way_softmax_as_sigmoid", lambda m, t, r: two_way_softmax_as_sigmoid(m), check=True),
    # after it (it reads a softmax's Gathers); check too: a token pick x[:, 0] had no integer lowering anywhere
    FloatPass("gathers_as_slices", lambda m, t, r: gathers_as_slices(m), check=True),
    # before the affine folds, which would take the LayerNorm's scale and shift apart from it; check too:
    # the written-out chain alternates integer and CPU nodes where the unit is one CPU op
    FloatPass("layer_norms", lambda m, t, r: layer_norms(m), check=True),
    # first too: a bias Add between a layer and its BN (PP-OCRv4 det's ConvTranspose); check too: a
    # HardSigmoid after a folded bias Add reads the layer itself, and the target rewrite folds it there
    FloatPass("fold_affine", lambda m, t, r: fold_affine(m), check=True),
    FloatPass("fold_batchnorm", lambda m, t, r: fold_batchnorm(m), check=False),
    # check too: RivaGAN's Conv3d (1 x 11 x 11 on N x C x 1 x H x W frames) read "conv3d has no DPU implementation";
    # after the BN folds into a Conv3d, before a BN that stays becomes a depthwise convolution (a 2-D one, then)
    FloatPass("depth1_conv3d_as_2d", lambda m, t, r: depth1_conv3d_as_2d(m), check=True),
    FloatPass("batchnorm_to_depthwise", lambda m, t, r: batchnorm_to_depthwise(m), check=False),
    FloatPass("linear_resizes_as_conv_transpose", linear_resizes_as_conv_transpose, check=True),
    # sized: a split of a dynamic-batch tensor read the batch's name as its channel count (CoAtNet, round 27)
    FloatPass("splits_as_slices", splits_as_slices, check=True, sized=True),
    FloatPass("fold_affine", lambda m, t, r: fold_affine(m), check=True),
    # check too: a layer scale on tokens after a MatMul + bias is no node check could place on the accelerator
    FloatPass("fold_linear_affine", lambda m, t, r: fold_linear_affine(m), check=True),
    # check too: Linformer's E @ k (a constant first operand) had no integer lowering; before the unit-axis
    # transposes, which turn the swaps it writes around a width-1 axis into reshapes
    FloatPass("const_left_matmuls_as_right", lambda m, t, r: const_left_matmuls_as_right(m, t), check=True),
    # check too: BoTNet's relative-position logits q^T @ P (P: one constant matrix per head) had no integer lowering
    FloatPass("head_matmuls_as_2d", lambda m, t, r: head_matmuls_as_2d(m, t), check=True),
    # check too: ResNeSt's radix sums x.view(b, r, c, h, w).sum(1) had no integer lowering anywhere
    FloatPass("short_sums_as_adds", lambda m, t, r: short_sums_as_adds(m, t), check=True),
    # check too: ECA's swaps of (N, C, 1) and (N, 1, C) moved no data but had bernoulli2 run them on the CPU
    FloatPass("unit_axis_transposes_as_reshape", lambda m, t, r: unit_axis_transposes_as_reshape(m), check=True),
    # sized: a token mean after a TorchScript flatten of a dynamic batch had no known token count (CoAtNet, round 27)
    FloatPass("ops_1d_as_2d", lambda m, t, r, static_inputs=None: ops_1d_as_2d(m, static_inputs), check=True,
              sized=True),
    # check's judge reads static shapes of the tensors the passes above made
    FloatPass("infer_static_shapes", lambda m, t, r: infer_static_shapes(m), check=True, optimize=False),
    FloatPass("canonical_linear_biases", lambda m, t, r: canonical_linear_biases(m), check=False),
    FloatPass("untie_shared_biases", lambda m, t, r: untie_shared_biases(m), check=False),
    FloatPass("fuse_activation_patterns", lambda m, t, r: fuse_activation_patterns(m), check=False),
    FloatPass("canonical_gelus", lambda m, t, r: canonical_gelus(m), check=False),
    # check too: a one-pass variance's squares read the deviation, not x (where x's producer runs may depend on it)
    FloatPass("stable_variances", lambda m, t, r: stable_variances(m), check=True),
    FloatPass("accelerator_forward_folds", lambda m, t, r: accelerator_forward_folds(m, t), check=True),
    FloatPass("target_rewrites", _target_rewrites, check=True, sized=True),
)


def float_passes(model: onnx.ModelProto, target: Target | None, rewrites: list[Rewrite] | None,
                 *, for_check: bool, static_inputs: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Run :data:`FLOAT_PASSES` in order: those marked ``check`` for check of a float model, the
    ``optimize`` ones for ``optimize_float``."""
    for step in FLOAT_PASSES:
        if step.check if for_check else step.optimize:
            model = (step.run(model, target, rewrites, static_inputs=static_inputs) if step.sized
                     else step.run(model, target, rewrites))
    return model


def optimize_float(model: onnx.ModelProto, target: Target | None = None,
                   rewrites: list[Rewrite] | None = None,
                   static_inputs: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Apply the float passes in order; node names of compute nodes are kept.  With ``target``,
    the target rewrites too; what they changed or left is appended to ``rewrites`` when given.

    ``static_inputs`` (input name -> dims): the shape quantize freezes a dynamic graph at for check
    and compile.  A target rewrite that needs a node's size judges a node of unknown size at that
    shape, and then writes only a form exact at every size (the graph stays dynamic): without it,
    check of the frozen model ran the rewrite that the dynamic graph never got, and placed on the
    accelerator a node compile left on the CPU (PP-OCRv4 rec's last AveragePool on bernoulli2)."""
    m = float_passes(model, target, rewrites, for_check=False, static_inputs=static_inputs)
    restore_node_names(model, m)
    return m


def restore_node_names(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Give rewritten nodes back the name of the node that wrote the same tensor before.

    The onnxscript rewriter replaces some nodes one for one under a generated name (``Flatten``
    becomes ``Reshape`` named ``node_Reshape_0``); users, reports and overrides refer to the
    original names, so a node with a generated name writing a tensor that an original node wrote
    takes that node's name when the name is free (nodes that kept their names are left alone).
    """
    writer = GraphView(before)
    names_before = {n.name for n in writer.nodes if n.name}
    taken = {n.name for n in after.graph.node}
    for node in after.graph.node:
        original = getattr(writer.producer_node(node.output[0]), "name", None) if node.output else None
        if original and node.name not in names_before and original not in taken:
            taken.discard(node.name)
            node.name = original
            taken.add(original)
