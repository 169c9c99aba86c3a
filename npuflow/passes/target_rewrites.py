"""Target rewrites: exact float rewrites that turn an op the target rejects into ops it runs.

The quantizer places the *optimised* float model, so an op whose parameters the accelerator does
not implement, but which an exact rewrite turns into ones it does, need not leave the accelerator;
``check`` of a float model applies these rewrites too (last, as :func:`.optimize.optimize_float`), so it
reports the placement compile gives, each rewrite noted on its node.  Each rewrite runs only where the target's
own rule (its data file, judged by :func:`npuflow.targets.judge.rule_reasons` with the checker's
parameter names) rejects the node and accepts the rewritten form, so a target that runs the
original op sees no change.  Both keep the float function up to float rounding:

* **HardSigmoid with other parameters** (PP-LCNetV3's SE blocks: alpha 0.2, beta 0.5) on a
  target whose hard-sigmoid is the standard one (DPU: ``relu6(x + 3) / 6``, alpha 1/6, beta 1/2).
  ``clip(a*x + b, 0, 1) = clip(y/6 + 1/2, 0, 1)`` with ``y = 6a*x + 6b - 3``: when ``x`` is the
  output of a Conv/ConvTranspose/Gemm read only by the HardSigmoid, the layer takes
  ``W' = 6a*W``, ``B' = 6a*B + 6b - 3`` and the HardSigmoid becomes ``HardSigmoid(1/6, 1/2)``
  (node name and tensors kept).  Without such a producer the node is left (reported).
* **GlobalAveragePool over a map larger than the target's pooling window** (PP-OCRv4 det's
  160x160 neck maps on DPUCZDX8G: ``ceil(160/8)*160 = 3200 > bank_depth 2048``).  The mean
  of equal blocks' means is the mean: ``AveragePool(kernel = stride = (kh, kw))`` with
  ``kh | H``, ``kw | W`` followed by ``GlobalAveragePool`` over the ``H/kh x W/kw`` map.  The block
  is the largest (most values averaged in the first stage, then the squarest) for which the
  target's ``avg_pool`` rule accepts the first stage and its ``global_avg_pool`` rule the second.
  No such divisor pair (or an unknown map size): the node is left (reported).
* **AveragePool over a whole axis wider than the target's window** (BC-ResNet's frequency means,
  ``x.mean(2)`` as ``AveragePool`` 40 x 1 by :mod:`.ops_1d`, on bernoulli2: kernel at most 7, stride 1
  or 2, round 20).  Means of equal blocks averaged again are the mean: stages of
  ``AveragePool(kernel = stride = d)`` along that axis (the largest divisor ``d`` the target's
  ``avg_pool`` rule accepts) until the rest fits one window (stride 1): 40 = 2 x 2 x 2 x 5.  No such
  cascade: the node is left (reported).
* **AveragePool with a stride the target's pool rejects** (Fast-SCNN's and PSPNet's pyramid pooling,
  ``adaptive_avg_pool2d(x, 3)`` of a 6 x 6 map exported as ``AveragePool`` 2 x 2 stride 2, and bins of 2:
  3 x 3 stride 3, on bernoulli2: stride 1 or 2, round 23a).  A window's average does not depend on the
  stride: ``AveragePool(kernel, stride 1)`` computes every window, and ``MaxPool`` 1 x 1 with the original
  stride keeps the ones the strided pool would (a max over one value is that value, in integers too).
  Only unpadded pools, without ceil_mode or dilation; along an axis the window covers whole the stride
  does not matter and becomes 1 (no ``MaxPool`` when that is enough).  Where the target accepts neither
  the stride-1 window nor the 1 x 1 subsampling, the node is left (reported).
* **Sub of two tensors on a target with an element-wise add and no subtract** (DnCNN's residual
  ``x - f(x)``, round 21: DPUCZDX8G and bernoulli2 ran the model's last op in float on the CPU).
  ``a - y = a + (-y)``: when ``y`` is the output of a Conv/ConvTranspose/Gemm read only by the Sub,
  the layer takes ``W' = -W``, ``B' = -B`` and the Sub becomes an ``Add`` (node name and tensors
  kept; symmetric weight quantization negates exactly); a lone BatchNormalization (FastViT's
  RepMixer ``BN(dw(x)) - BN(x)``, round 27) takes a negated scale and shift, as check judges it
  before the float passes make it a depthwise Conv.  The layer may reach the Sub through ops that
  commute with negation (:data:`~npuflow.operators.NEGATION_COMMUTING_OPS`, each read once): N-HiTS'
  backcast ``Squeeze(Resize(Unsqueeze(Slice(Gemm))))``, round 28e; where the layer's output is also read
  by other ``Slice``\ s of channels disjoint from the chain's, only the chain's channels are negated
  (the forecast's keep their sign).  Without such a producer the node is left
  (check's reason says the target has no Sub; not listed, since every written-out LayerNorm has one).
* **A strided convolution with a kernel beyond the target's range** (DS-CNN's 10x4 stride-2 first conv
  on bernoulli2, kernels up to 7x7): ``SpaceToDepth(s)`` then a stride-1 convolution with kernel
  ``ceil(k/s)``, exact on integer codes too (:mod:`.wide_conv`).  A rewritten form the target rejects:
  the node is left (reported).
* **A max or mean over a map's channels** (CBAM's / Triplet attention's Z-pool ``x.max(1)``, ``x.mean(1)``,
  round 23a): ``Reshape`` to N x 1 x C x (H*W), ``MaxPool`` / ``AveragePool`` C x 1, ``Reshape`` back
  (:mod:`.channel_pool`), where the target runs that form and its own reduction rule, if any, accepts
  the reduction.  Otherwise the node is left (reported).
* **PyTorch's PixelUnshuffle** (``Reshape -> Transpose -> Reshape``) on a target without a transpose
  (bernoulli2) as ``SpaceToDepth``, the reading Convs' input channels permuted to its channel order
  (:mod:`.pixel_unshuffle`).

:func:`target_rewrites` returns what it changed and what it left, for the optimise stage's
report (``quant_info.json``'s ``algorithms.target_rewrites``) and log.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..graph import GraphView, attr, remove_unused_initializers, set_attr
from ..operators import HSIGMOID_ALPHA, HSIGMOID_BETA, HSIGMOID_DIVISOR, HSIGMOID_OFFSET, NEGATION_COMMUTING_OPS
from ..targets import Target
from ..targets.judge import rule_reasons
from ..value_info import inferred_shapes, tensor_shapes
from .absorb import set_layer_params
from .channel_pool import channel_reductions_as_pools
from .fold_affine import layer_params, scale_shift
from .fold_batchnorm import negate_batchnorm
from .fold_constants import frozen_view, shape_independent_dims
from .pixel_unshuffle import unshuffles_as_space_to_depth
from .wide_conv import wide_convs_as_space_to_depth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rewrite:
    """One node a target rewrite changed (``applied``) or had to leave (``why``)."""

    node: str
    # hard_sigmoid_into_layer | global_avg_pool_split | linear_resize_as_conv_transpose |
    # linear_resize_of_one_value_as_nearest | sub_as_add | wide_conv_as_space_to_depth |
    # pixel_unshuffle_as_space_to_depth | axis_avg_pool_cascade | avg_pool_stride_as_subsample |
    # channel_reduction_as_pool | linear_resize_as_matmul
    rewrite: str
    applied: bool
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


def target_rewrites(model: onnx.ModelProto, target: Target, static_inputs: dict[str, list[int]] | None = None
                    ) -> tuple[onnx.ModelProto, list[Rewrite]]:
    """A new model with the rewrites ``target`` needs (a copy when none), and the list of them.
    ``static_inputs``: the input shape a graph with dynamic dimensions is frozen at for check and
    compile; a strided pool of unknown size is judged there (:func:`_strided_avg_pools`)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    done: list[Rewrite] = []
    done += _hard_sigmoids(out.graph, target)
    # first: a channel mean's C x 1 average pool may need the axis cascade below
    done += [Rewrite(n, "channel_reduction_as_pool", ok, why) for n, ok, why in channel_reductions_as_pools(
        out, target, lambda c, h, w: _cascade(target, c, h, w, 2) is not None)]
    done += _global_avg_pools(out, target)
    done += _axis_avg_pools(out, target, static_inputs)
    done += _strided_avg_pools(out, target, static_inputs)
    done += _subs_as_adds(out.graph, target)
    done += [Rewrite(n, "wide_conv_as_space_to_depth", ok, why) for n, ok, why in wide_convs_as_space_to_depth(out, target)]
    done += [Rewrite(n, "pixel_unshuffle_as_space_to_depth", ok, why)
             for n, ok, why in unshuffles_as_space_to_depth(out, target)]
    finish(out.graph, done)
    return out, done


def finish(graph: onnx.GraphProto, done: list[Rewrite], rewrites: list[Rewrite] | None = None) -> None:
    """What every rewrite pass does last: drop the initializers a rewrite left unread, log each
    rewrite done or left, and add them to the caller's ``rewrites`` list where it keeps one."""
    if any(r.applied for r in done):
        remove_unused_initializers(graph)
    for r in done:
        log.info("%s %s: %s", "rewrote" if r.applied else "left", r.node, r.detail)
    if rewrites is not None:
        rewrites.extend(done)


def _shaped_view(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> GraphView:
    """A view of ``model``'s graph that knows the input shape of each of ``nodes`` where ONNX's shape
    inference can tell it (a graph without value infos)."""
    idx = GraphView(model.graph)
    if any(idx.shape(n.input[0]) is None for n in nodes):
        idx.shapes.update({k: v for k, v in inferred_shapes(model).items() if k not in idx.shapes})
    return idx


def _with_input_shapes(model: onnx.ModelProto, op_type: str) -> list[tuple[onnx.NodeProto, list | None, int]]:
    """Each ``op_type`` node of ``model`` with its input's shape (``None`` where unknown) and element
    type, read before the rewrite that asks changes the graph."""
    nodes = [n for n in model.graph.node if n.op_type == op_type]
    idx = _shaped_view(model, nodes)
    return [(n, idx.shape(n.input[0]), idx.elem_type(n.input[0]) or TensorProto.FLOAT) for n in nodes]


def _insert_before(graph: onnx.GraphProto, node: onnx.NodeProto, nodes: list[onnx.NodeProto], infos: list) -> None:
    """``nodes`` (in order) where ``node`` stands, before it, and ``infos`` as the graph's value infos."""
    at = next(i for i, n in enumerate(graph.node) if list(n.output) == list(node.output))
    for k, new in enumerate(nodes):
        graph.node.insert(at + k, new)
    graph.value_info.extend(infos)


def _reasons(target: Target, kind: str, params: dict) -> list[str] | None:
    """The target's objections to an op of ``kind`` with ``params``; ``None`` when it has no such op."""
    rule = target.rule(kind)
    return None if rule is None else rule_reasons(rule, params, target.hardware_names())


def _hard_sigmoids(graph: onnx.GraphProto, target: Target) -> list[Rewrite]:
    idx = GraphView(graph)
    standard = {"alpha": HSIGMOID_ALPHA, "beta": HSIGMOID_BETA}
    if _reasons(target, "hard_sigmoid", standard) != []:
        return []  # no hard-sigmoid, or not the standard one: the rewrite cannot help
    done = []
    for node in list(graph.node):
        if node.op_type != "HardSigmoid":
            continue
        a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
        if not _reasons(target, "hard_sigmoid", {"alpha": a, "beta": b}):
            continue
        name = node.name or node.output[0]
        prod = idx.producer_node(node.input[0])
        params = layer_params(idx, prod) if prod is not None else None
        if params is None or idx.only_consumer(node.input[0]) is None or a == 0.0:
            why = ("its input is not the output of a Conv/ConvTranspose/Gemm with constant weights read by it alone"
                   if a != 0.0 else "alpha 0 is a constant")
            done.append(Rewrite(name, "hard_sigmoid_into_layer", False,
                                f"HardSigmoid(alpha={a:g}, beta={b:g}) stays: {why}"))
            continue
        w, bias, axis = params
        # clip(a*x + b, 0, 1) == clip(y/6 + 1/2, 0, 1) for y = 6a*x + 6b - 3
        s, t = HSIGMOID_DIVISOR * a, HSIGMOID_DIVISOR * b - HSIGMOID_OFFSET
        w, bias = scale_shift(w, bias, axis, s, t)
        set_layer_params(graph, idx, prod, w, bias, "_hsig")
        set_attr(node, "alpha", float(HSIGMOID_ALPHA))
        set_attr(node, "beta", float(HSIGMOID_BETA))
        done.append(Rewrite(name, "hard_sigmoid_into_layer", True,
                            f"HardSigmoid(alpha={a:g}, beta={b:g}) -> HardSigmoid(1/6, 1/2) with {prod.name or prod.output[0]}"
                            f" scaled by {s:g} and shifted by {t:g}"))
        idx = GraphView(graph)  # consumers of the renamed weights changed
    return done


def _subs_as_adds(graph: onnx.GraphProto, target: Target) -> list[Rewrite]:
    """``a - layer(x)`` as ``a + layer'(x)`` with the layer negated, where the target adds but does
    not subtract (see the module docstring)."""
    if target.kind != "npu" or target.rule("eltwise_sub") is not None or target.rule("eltwise_add") is None:
        return []  # cpu-int8 subtracts (ONNX Runtime's kernels) without an eltwise_sub rule
    idx = GraphView(graph)
    done = []
    for node in list(graph.node):
        if node.op_type != "Sub" or node.domain or len(node.input) != 2 or any(idx.is_const(t) for t in node.input):
            continue
        name = node.name or node.output[0]
        found = _negatable_layer(idx, node.input[1])
        if found is None:
            continue  # not listed: check already tells that the target has no Sub (a LayerNorm's x - mean each)
        prod, channels, path = found
        params = layer_params(idx, prod)
        if params is not None:
            w, bias, axis = params
            s = -1.0 if channels is None else np.where(channels, -1.0, 1.0)
            w, bias = scale_shift(w, bias, axis, s, 0.0)
            set_layer_params(graph, idx, prod, w, bias, "_neg")
        elif channels is not None or not negate_batchnorm(graph, idx, prod):  # a lone BN (FastViT's RepMixer)
            continue
        node.op_type = "Add"
        which = "" if channels is None else f" output channels {_ranges(np.flatnonzero(channels))}"
        through = f" (through {' -> '.join(path)})" if path else ""
        done.append(Rewrite(name, "sub_as_add", True,
                            f"Sub -> Add of {prod.name or prod.output[0]}{which} negated{through}"))
        idx = GraphView(graph)  # consumers of the renamed weights changed
    return done


def _negatable_layer(idx: GraphView, tensor: str) -> tuple[onnx.NodeProto, np.ndarray | None, list[str]] | None:
    """The layer (Conv/ConvTranspose/Gemm, or a BatchNormalization) whose output reaches ``tensor``
    through ops that commute with negation (:data:`~npuflow.operators.NEGATION_COMMUTING_OPS`), each
    read only by the next; with the mask of the layer's output channels to negate (``None``: all) and
    the op types passed.  The layer's output may have other readers when the chain starts with a
    ``Slice`` of its channels and every other reader slices channels disjoint from them (N-HiTS' one
    Gemm for backcast and forecast): negating only those channels leaves the others' values."""
    path: list[str] = []
    reader = None
    t = tensor
    while True:
        prod = idx.producer_node(t)
        if prod is None or prod.domain:
            return None
        is_layer = layer_params(idx, prod) is not None or prod.op_type == "BatchNormalization"
        if idx.only_consumer(t) is None:
            if not is_layer or reader is None or idx.is_graph_output(t):
                return None
            mask = _channel_slice(idx, reader, t)
            others = [_channel_slice(idx, n, t) for n in idx.consumer_nodes(t) if n is not reader]
            if mask is None or any(m is None or (m & mask).any() for m in others):
                return None
            return prod, mask, path[::-1]
        if is_layer:
            return prod, None, path[::-1]
        if prod.op_type not in NEGATION_COMMUTING_OPS or \
                attr(prod, "coordinate_transformation_mode", b"") in (b"tf_crop_and_resize", "tf_crop_and_resize"):
            return None
        path.append(prod.op_type)
        reader, t = prod, prod.input[0]


def _channel_slice(idx: GraphView, node: onnx.NodeProto, tensor: str) -> np.ndarray | None:
    """Which channels (axis 1) of the layer output ``tensor`` the ``Slice`` ``node`` keeps, as a mask,
    or ``None`` when it is no constant slice of that axis alone."""
    shape = idx.shape(tensor)
    layer = idx.producer_node(tensor)
    params = layer_params(idx, layer) if layer is not None else None
    if node.op_type != "Slice" or node.input[0] != tensor or len(node.input) < 3 or params is None:
        return None
    consts = [idx.const(n) if n else None for n in node.input[1:5]]
    starts, ends = consts[0], consts[1]
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.array([0])
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.array([1])
    if starts is None or ends is None or any(n and idx.const(n) is None for n in node.input[3:5]):
        return None
    rank = len(shape) if shape is not None else None
    if len(starts) != 1 or len(axes) != 1 or (int(axes[0]) if axes[0] >= 0 or rank is None else int(axes[0]) + rank) != 1:
        return None
    n = len(params[1])
    mask = np.zeros(n, bool)
    mask[slice(int(starts[0]), int(ends[0]), int(steps[0]))] = True
    return mask


def _ranges(indices: np.ndarray) -> str:
    """``0-23`` for a run of indices, ``0, 2, 4`` otherwise (a rewrite's note)."""
    if len(indices) and indices[-1] - indices[0] + 1 == len(indices):
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices))


def _global_avg_pools(model: onnx.ModelProto, target: Target) -> list[Rewrite]:
    graph = model.graph
    done = []
    for node, xs, elem in _with_input_shapes(model, "GlobalAveragePool"):
        name = node.name or node.output[0]
        if xs is None or len(xs) != 4 or min(xs) <= 0:
            rule = target.rule("global_avg_pool")
            if rule is not None and (rule.constraints or rule.params):  # limits it cannot judge
                done.append(Rewrite(name, "global_avg_pool_split", False,
                                    "GlobalAveragePool stays: its input is not a 4-D map of known size"))
            continue
        c, h, w = xs[1], xs[2], xs[3]
        whole = _global_params(c, h, w)
        if not _reasons(target, "global_avg_pool", whole):
            continue  # runs as it is, or the target has no global pool (nothing to split for)
        block = _block(target, c, h, w)
        if block is None:
            done.append(Rewrite(name, "global_avg_pool_split", False,
                                f"GlobalAveragePool over {h}x{w} stays: no block kh x kw with kh | {h}, kw | {w} "
                                f"that {target.name}'s avg_pool and global_avg_pool rules both accept"))
            continue
        kh, kw = block
        mid = f"{node.output[0]}/block"
        pool = helper.make_node("AveragePool", [node.input[0]], [mid], name=f"{name}/block", kernel_shape=[kh, kw],
                                strides=[kh, kw])
        _insert_before(graph, node, [pool], [helper.make_tensor_value_info(mid, elem, [xs[0], c, h // kh, w // kw])])
        node.input[0] = mid
        done.append(Rewrite(name, "global_avg_pool_split", True,
                            f"GlobalAveragePool over {h}x{w} -> AveragePool {kh}x{kw} stride {kh}x{kw} "
                            f"({name}/block) then GlobalAveragePool over {h // kh}x{w // kw}"))
    return done


def _axis_avg_pools(model: onnx.ModelProto, target: Target,
                    static_inputs: dict[str, list[int]] | None = None) -> list[Rewrite]:
    """The whole-axis average pools the target's window is too small for, as cascades (module docstring).

    A pool whose map size the dynamic graph does not know takes the sizes that hold at every input shape
    (:func:`.fold_constants.shape_independent_dims`): CoAtNet's token mean over a flatten of a dynamic
    batch, a 16 x 1 pool on bernoulli2 (window at most 7), was cascaded in check only (round 27)."""
    graph = model.graph
    done = []
    pools = _with_input_shapes(model, "AveragePool")
    known = lambda xs: xs is not None and all(isinstance(d, int) for d in xs[1:])
    if static_inputs and not all(known(xs) for _, xs, _ in pools):
        fixed = shape_independent_dims(model, static_inputs)
        pools = [(n, xs if known(xs) else fixed.get(n.input[0], xs), elem) for n, xs, elem in pools]
    for node, xs, elem in pools:
        a = {k: attr(node, k) for k in ("kernel_shape", "pads", "ceil_mode", "dilations")}
        if xs is None or len(xs) != 4 or not all(isinstance(d, int) and d > 0 for d in xs[1:]) or \
                any(a["pads"] or []) or a["ceil_mode"] or any(d != 1 for d in a["dilations"] or []):
            continue
        kh, kw = a["kernel_shape"]
        axis = 2 if (kh, kw) == (xs[2], 1) and kh > 1 else 3 if (kh, kw) == (1, xs[3]) and kw > 1 else None
        c, h, w = xs[1], xs[2], xs[3]
        if axis is None or not _reasons(target, "avg_pool", _window_params(c, h, w, kh, kw, 1, 1)):
            continue
        stages = _cascade(target, c, h, w, axis)
        name = node.name or node.output[0]
        if stages is None:
            done.append(Rewrite(name, "axis_avg_pool_cascade", False,
                                f"AveragePool {kh}x{kw} stays: no cascade of pools along axis {axis} that "
                                f"{target.name}'s avg_pool rule accepts"))
            continue
        x, size, new, infos = node.input[0], xs[axis], [], []
        for k, d in enumerate(stages):
            mid = f"{node.output[0]}/stage{k}"
            pool = [d, 1] if axis == 2 else [1, d]
            new.append(helper.make_node("AveragePool", [x], [mid], name=f"{name}/stage{k}", kernel_shape=pool,
                                        strides=pool))
            size //= d
            infos.append(helper.make_tensor_value_info(mid, elem, [xs[0], c, size if axis == 2 else h,
                                                                   w if axis == 2 else size]))
            x = mid
        _insert_before(graph, node, new, infos)
        node.input[0] = x
        set_attr(node, "kernel_shape", [size, 1] if axis == 2 else [1, size])
        done.append(Rewrite(name, "axis_avg_pool_cascade", True,
                            f"AveragePool {kh}x{kw} -> {len(stages)} AveragePool(s) with kernel = stride "
                            f"{'x'.join(map(str, stages))} then one over {size}"))
    return done


def _static_map(xs: list | None) -> bool:
    return xs is not None and len(xs) == 4 and all(isinstance(d, int) and d > 0 for d in xs[1:])


def _strided_avg_pools(model: onnx.ModelProto, target: Target,
                       static_inputs: dict[str, list[int]] | None = None) -> list[Rewrite]:
    """The strided average pools the target's pool rejects, as a stride-1 pool and a 1 x 1
    ``MaxPool`` that keeps every stride-th value (module docstring).

    A pool whose map size the graph leaves dynamic is judged at its size in the graph frozen at
    ``static_inputs`` (what check and compile see), and gets only the two-node form, exact at every
    size: a window that covers a whole axis at that size need not at another (PP-OCRv4 rec's last
    pool, 3 x 2 stride 3 x 2 over 3 rows at height 48, 6 rows at 96)."""
    graph = model.graph
    done = []
    pools = _with_input_shapes(model, "AveragePool")
    sized: dict[str, list] = {}
    if static_inputs and any(not _static_map(xs) for _, xs, _ in pools):
        sized = tensor_shapes(frozen_view(model, static_inputs))
    for node, xs, elem in pools:
        general = not _static_map(xs)
        if general:
            xs = sized.get(node.input[0])
        a = {k: attr(node, k) for k in ("kernel_shape", "strides", "pads", "ceil_mode", "dilations")}
        if not _static_map(xs) or \
                len(a["kernel_shape"] or []) != 2 or any(a["pads"] or []) or a["ceil_mode"] or \
                any(d != 1 for d in a["dilations"] or []):
            continue
        c, h, w = xs[1], xs[2], xs[3]
        (kh, kw), (sh, sw) = a["kernel_shape"], a["strides"] or [1, 1]
        if kh > h or kw > w or not _reasons(target, "avg_pool", _window_params(c, h, w, kh, kw, sh, sw)):
            continue
        if not general:  # a window over a whole axis: any stride
            sh, sw = (1 if kh == h else sh), (1 if kw == w else sw)
        name = node.name or node.output[0]
        if _reasons(target, "avg_pool", _window_params(c, h, w, kh, kw, 1, 1)):
            done.append(Rewrite(name, "avg_pool_stride_as_subsample", False,
                                f"AveragePool {kh}x{kw} stride {sh}x{sw} stays: {target.name}'s avg_pool rule "
                                f"rejects its {kh}x{kw} window at stride 1 too"))
            continue
        if not general and ((sh, sw) == (1, 1) or not _reasons(target, "avg_pool", _window_params(c, h, w, kh, kw, sh, sw))):
            set_attr(node, "strides", [sh, sw])
            done.append(Rewrite(name, "avg_pool_stride_as_subsample", True,
                                f"AveragePool {kh}x{kw} over {h}x{w}: stride 1 along the axis its window covers whole"))
            continue
        ph, pw = h - kh + 1, w - kw + 1
        if _reasons(target, "max_pool", _window_params(c, ph, pw, 1, 1, sh, sw)):
            done.append(Rewrite(name, "avg_pool_stride_as_subsample", False,
                                f"AveragePool {kh}x{kw} stride {sh}x{sw} stays: {target.name}'s max_pool rule "
                                f"rejects the 1x1 stride-{sh}x{sw} subsampling"))
            continue
        mid = f"{node.output[0]}/stride1"
        _insert_before(graph, node, [helper.make_node("AveragePool", [node.input[0]], [mid], name=f"{name}/stride1",
                                                      kernel_shape=[kh, kw], strides=[1, 1])],
                       [helper.make_tensor_value_info(mid, elem, None if general else [xs[0], c, ph, pw])])
        node.op_type = "MaxPool"
        node.input[0] = mid
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("kernel_shape", [1, 1]), helper.make_attribute("strides", [sh, sw])])
        done.append(Rewrite(name, "avg_pool_stride_as_subsample", True,
                            f"AveragePool {kh}x{kw} stride {sh}x{sw} -> AveragePool {kh}x{kw} stride 1 "
                            f"({name}/stride1) then MaxPool 1x1 stride {sh}x{sw}"))
    return done


def _cascade(target: Target, c: int, h: int, w: int, axis: int) -> list[int] | None:
    """The block sizes of the stages before a last pool over the rest of ``axis`` fits, or None."""
    stages: list[int] = []
    size = h if axis == 2 else w
    while True:
        hh, ww = (size, w) if axis == 2 else (h, size)
        if not _reasons(target, "avg_pool", _window_params(c, hh, ww, *((size, 1) if axis == 2 else (1, size)), 1, 1)):
            return stages
        fits = [d for d in _divisors(size)[1:-1]
                if not _reasons(target, "avg_pool", _window_params(c, hh, ww, *((d, 1) if axis == 2 else (1, d)),
                                                                   *((d, 1) if axis == 2 else (1, d))))]
        if not fits:
            return None
        stages.append(fits[-1])
        size //= fits[-1]


def _window_params(c: int, h: int, w: int, kh: int, kw: int, sh: int, sw: int) -> dict:
    """The checker's parameters of an unpadded ``AveragePool`` (``node_kinds._pool``)."""
    return {**_pool_params(c, h, w, kh, kw), "stride_h": sh, "stride_w": sw}


def _global_params(c: int, h: int, w: int) -> dict:
    """The checker's parameters of a global pool (``node_kinds._global_pool``)."""
    return {"input_channel": c, "output_channel": c, "kernel_h": h, "kernel_w": w, "input_h": h, "input_w": w,
            "stride_h": 1, "stride_w": 1}


def _pool_params(c: int, h: int, w: int, kh: int, kw: int) -> dict:
    """The checker's parameters of ``AveragePool(kernel = stride = (kh, kw))`` without padding (``node_kinds._pool``)."""
    return {"kernel_h": kh, "kernel_w": kw, "stride_h": kh, "stride_w": kw, "dilation_h": 1, "dilation_w": 1,
            "pad_top": 0, "pad_left": 0, "pad_bottom": 0, "pad_right": 0, "input_channel": c, "output_channel": c,
            "input_h": h, "input_w": w, "ceil_mode": 0}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _block(target: Target, c: int, h: int, w: int) -> tuple[int, int] | None:
    """The block ``(kh, kw)`` of the split (module docstring), or ``None``."""
    fits = []
    for kh in _divisors(h):
        for kw in _divisors(w):
            if (kh, kw) in ((1, 1), (h, w)):
                continue
            if _reasons(target, "avg_pool", _pool_params(c, h, w, kh, kw)) == [] and \
                    not _reasons(target, "global_avg_pool", _global_params(c, h // kh, w // kw)):
                fits.append((kh * kw, -abs(kh - kw), -kh, (kh, kw)))
    return max(fits)[3] if fits else None
