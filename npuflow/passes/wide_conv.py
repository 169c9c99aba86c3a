"""Target rewrite: a strided convolution whose kernel the target rejects, as ``SpaceToDepth`` and a
smaller convolution (DS-CNN's 10x4 stride-2 first layer on bernoulli2, whose kernels stop at 7x7).

A convolution with stride ``s`` in both axes reads input row ``i*s + a`` for output row ``i`` and
kernel row ``a``; writing ``a = u*s + d`` (``0 <= d < s``) it reads row ``u`` of phase ``d`` of the
input cut into ``s x s`` blocks.  ``SpaceToDepth(s)`` puts phase ``(d_y, d_x)`` of channel ``c`` in
channel ``(d_y*s + d_x)*C + c`` (ONNX's order), so the convolution equals a stride-1 convolution with
kernel ``ceil(kh/s) x ceil(kw/s)`` on ``s*s*C`` channels over the space-to-depth of the padded input,
with ``W'[o, (d_y*s + d_x)*C + c, u, v] = W[o, c, u*s + d_y, v*s + d_x]`` (zero past the kernel).

It is exact in the quantized model, not only in float: the new layer multiplies the same input codes
by the same weights (a weight's per-channel or per-tensor maximum is unchanged by the added zeros, so
its scale and codes are the same) and sums them into one accumulator that is requantised once, with
the same bias.  A split into several convolutions over kernel slices added afterwards is not: each
piece's accumulator would be requantised to int8 before the add (one rounding per piece, then the
add's), and no target here adds int32 accumulators of two layers.  So a stride-1 convolution with a
kernel beyond the target's range stays where check puts it (on the CPU, with the limit named).

Where the target's ``SpaceToDepth`` does not take the stride ``s`` as its block (bernoulli2's is block
2 only), a block ``b`` dividing ``s`` leaves a convolution of stride ``s / b`` and kernel ``ceil(k/b)``
on ``b*b*C`` channels (the same construction, row ``i*s + a`` being row ``i*(s/b) + u`` of phase
``d`` for ``a = u*b + d``), which the next step rewrites again: a 16x16 stride-4 convolution is two
block-2 steps to a 4x4 stride-1 one.  The chain is applied only where the target runs every node of
its last form, and is as exact as one step (the same products, one accumulator).

The padding goes first as a ``Pad`` of zeros (the zero point in the quantized model), extended
at the bottom/right to the rows and columns the blocks need (zeros the new kernel's tail multiplies
by zero weights), or those the outputs never read dropped by a ``Slice``; padding already a whole
number of blocks stays on the new convolution.  The rewrite runs only where the target rejects the
convolution's kernel and accepts every node of the rewritten form (judged as check judges them); the
new kernel is smaller but reads ``s*s`` times the channels, so a channel or kernel-volume limit can
still reject it (the node is then left, with that reason).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import GraphView, attr
from ..node_kinds import classify
from ..targets import Target
from ..targets.judge import rule_reasons
from ..value_info import inferred_shapes


def wide_convs_as_space_to_depth(model: onnx.ModelProto, target: Target) -> list[tuple[str, bool, str]]:
    """Rewrite in place each Conv of ``model`` that the module docstring covers; ``(node, applied, detail)``
    for each one rewritten or left (the caller's :class:`~.target_rewrites.Rewrite` records)."""
    done = []
    view = shaped_view(model)
    for out in [n.output[0] for n in model.graph.node if n.op_type == "Conv" and not n.domain]:
        node = view.producer_node(out)
        name = node.name or out
        plan = _plan(node, view)
        if plan is None or not any(r.startswith("kernel ") for r in node_reasons(node, view, target)):
            continue  # not a strided conv the rewrite covers, or its kernel is not what the target rejects
        s, kh, kw = plan["s"], plan["kh"], plan["kw"]
        steps = _steps(model, out, target)
        if isinstance(steps, str):
            done.append((name, False, f"Conv {kh}x{kw} stride {s} stays: the rewritten form's {steps}"))
            continue
        model.CopyFrom(steps[0])
        blocks = " then ".join(f"SpaceToDepth({b})" for b in steps[1])
        k2 = [math.ceil(k / math.prod(steps[1])) for k in (kh, kw)]
        done.append((name, True, f"Conv {kh}x{kw} stride {s} -> {blocks} then Conv {k2[0]}x{k2[1]} stride "
                                 f"{s // math.prod(steps[1])} on {math.prod(steps[1]) ** 2}x the channels "
                                 f"(the same products in one accumulator)"))
        view = shaped_view(model)
    return done


def _steps(model: onnx.ModelProto, out: str, target: Target, step: int = 1) -> tuple[onnx.ModelProto, list[int]] | str:
    """``model`` with the Conv making ``out`` rewritten until the target runs every new node, and the
    block of each step; or why it cannot be.  A step takes block ``s`` (the stride) where the target
    runs that, else a smaller divisor ``b`` of ``s``, leaving a Conv of stride ``s / b`` and kernel
    ``ceil(k / b)`` on ``b*b`` times the channels that the next step takes (bernoulli2's
    SpaceToDepth is block 2 only: a 16x16 stride-4 conv is two block-2 steps).  Each step is the same
    products in one accumulator, so the chain is as exact as one step."""
    view = shaped_view(model)
    node = view.producer_node(out)
    plan = _plan(node, view)
    if plan is None:
        return "Conv: not a strided convolution the rewrite covers"
    s = plan["s"]
    why = ""
    for b in [s, *[d for d in range(s - 1, 1, -1) if s % d == 0]]:
        new = _rewritten(node, view, plan, b, step)
        why = _objections(node, view, target, plan, new, last=b == s)
        if why:
            continue
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        _replace(trial.graph, node, new)
        if b == s:
            return trial, [b]
        rest = _steps(trial, out, target, step + 1)
        if isinstance(rest, str):
            why = rest
            continue
        return rest[0], [b, *rest[1]]
    return why


def shaped_view(model: onnx.ModelProto) -> GraphView:
    """A view that knows the tensor shapes ONNX's shape inference can tell (a graph without value infos)."""
    view = GraphView(model.graph)
    view.shapes.update({k: v for k, v in inferred_shapes(model).items() if k not in view.shapes})
    return view


def _plan(node: onnx.NodeProto, view: GraphView) -> dict | None:
    """The geometry of a Conv the rewrite can take, or ``None``: constant weights, no groups, no
    dilation, stride s >= 2 in both axes, explicit pads and a known 4-D input."""
    w = view.const(node.input[1])
    xs = view.shape(node.input[0])
    if w is None or w.ndim != 4 or xs is None or len(xs) != 4 or not all(isinstance(d, int) and d > 0 for d in xs[1:]):
        return None
    if len(node.input) > 2 and node.input[2] and view.const(node.input[2]) is None:
        return None
    strides = list(attr(node, "strides") or [1, 1])
    if attr(node, "group", 1) != 1 or any(d != 1 for d in attr(node, "dilations") or []) or \
            attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or len(set(strides)) != 1 or strides[0] < 2:
        return None
    pt, pl, pb, pr = (list(attr(node, "pads") or [0, 0, 0, 0]) + [0] * 4)[:4]
    s, (kh, kw) = int(strides[0]), w.shape[2:]
    ho, wo = (xs[2] + pt + pb - kh) // s + 1, (xs[3] + pl + pr - kw) // s + 1
    if ho < 1 or wo < 1:
        return None
    pads = {}
    for b in (d for d in range(2, s + 1) if s % d == 0):
        # rows/columns blocks of b need: the last output's first row plus the new kernel's b*ceil(k/b)
        # rows, from the top/left padding on
        need_h, need_w = (ho - 1) * s + b * math.ceil(kh / b), (wo - 1) * s + b * math.ceil(kw / b)
        pads[b] = (pt, pl, need_h - xs[2] - pt, need_w - xs[3] - pl)
    return {"s": s, "kh": kh, "kw": kw, "w": w, "xs": xs, "pads": pads, "out": (ho, wo)}


def node_reasons(node: onnx.NodeProto, view: GraphView, target: Target) -> list[str]:
    """The target's objections to ``node`` as check states them (no rule: no implementation)."""
    info = classify(node, view, view.position(node))
    rule = target.rule(info.kind)
    if rule is None:
        return [f"{node.op_type} ({info.kind}) has no {target.device_label} implementation on {target.name}"]
    return rule_reasons(rule, info.params, target.hardware_names())


def _rewritten(node: onnx.NodeProto, view: GraphView, plan: dict, block: int,
               step: int = 1) -> tuple[list[onnx.NodeProto], list, list]:
    """The nodes replacing ``node`` with a ``SpaceToDepth(block)`` (``block`` divides the stride; the new
    Conv keeps its name, bias and output, with stride ``stride / block``), their initializers and the
    value infos of the tensors between them (named after ``node``, with ``step`` from the second step on)."""
    name = (node.name or node.output[0]) + ("" if step == 1 else f"/step{step}")
    stride, w = plan["s"], plan["w"]
    s = block
    pt, pl, pb, pr = plan["pads"][block]
    n, c, h, wd = plan["xs"]
    o, kh2, kw2 = w.shape[0], math.ceil(plan["kh"] / s), math.ceil(plan["kw"] / s)
    padded = np.zeros((o, c, s * kh2, s * kw2), w.dtype)
    padded[:, :, :plan["kh"], :plan["kw"]] = w
    # W'[o, (dy*s + dx)*C + c, u, v] = W[o, c, u*s + dy, v*s + dx]
    w2 = padded.reshape(o, c, kh2, s, kw2, s).transpose(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, kh2, kw2)
    weight = numpy_helper.from_array(np.ascontiguousarray(w2), f"{name}/s2d_weight")
    nodes, inits, infos, x = [], [weight], [], node.input[0]
    elem = view.elem_type(node.input[0]) or TensorProto.FLOAT
    if pb < 0 or pr < 0:  # rows/columns no output reads: dropped, so the blocks tile the map
        h, wd = h + min(pb, 0), wd + min(pr, 0)
        inits += [numpy_helper.from_array(np.array(v, np.int64), f"{name}/crop_{k}")
                  for k, v in (("starts", [0, 0]), ("ends", [h, wd]), ("axes", [2, 3]))]
        nodes.append(helper.make_node("Slice", [x] + [i.name for i in inits[-3:]], [f"{name}/crop"],
                                      name=f"{name}/crop"))
        x = f"{name}/crop"
        infos.append(helper.make_tensor_value_info(x, elem, [n, c, h, wd]))
    pb, pr = max(pb, 0), max(pr, 0)
    whole = all(p % s == 0 for p in (pt, pl, pb, pr))
    if not whole:
        inits.append(numpy_helper.from_array(np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64), f"{name}/pads"))
        nodes.append(helper.make_node("Pad", [x, inits[-1].name], [f"{name}/pad"], name=f"{name}/pad", mode="constant"))
        x, h, wd = f"{name}/pad", h + pt + pb, wd + pl + pr
        infos.append(helper.make_tensor_value_info(x, elem, [n, c, h, wd]))
    nodes.append(helper.make_node("SpaceToDepth", [x], [f"{name}/s2d"], name=f"{name}/space_to_depth", blocksize=s))
    infos.append(helper.make_tensor_value_info(f"{name}/s2d", elem, [n, s * s * c, h // s, wd // s]))
    conv_pads = [pt // s, pl // s, pb // s, pr // s] if whole else [0, 0, 0, 0]
    bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
    nodes.append(helper.make_node("Conv", [f"{name}/s2d", weight.name, *bias], list(node.output), name=node.name,
                                  kernel_shape=[kh2, kw2], pads=conv_pads, strides=[stride // s] * 2))
    return nodes, inits, infos


def _objections(node: onnx.NodeProto, view: GraphView, target: Target, plan: dict,
                new: tuple[list[onnx.NodeProto], list, list], last: bool = True) -> str:
    """Why the target would not run the rewritten form (empty: it runs every node), judged on a model
    of the new nodes alone; not ``last``: the new Conv is left to the next step (:func:`_steps`)."""
    nodes, inits, infos = new
    n, c, h, wd = plan["xs"]
    elem = view.elem_type(node.input[0]) or TensorProto.FLOAT
    extra = [numpy_helper.from_array(view.const(node.input[2]), node.input[2])] if len(node.input) > 2 and \
        node.input[2] else []
    graph = helper.make_graph(nodes, "wide_conv", [helper.make_tensor_value_info(node.input[0], elem, [n, c, h, wd])],
                              [helper.make_tensor_value_info(node.output[0], elem,
                                                             [n, plan["w"].shape[0], *plan["out"]])],
                              inits + extra, value_info=infos)
    part = GraphView(graph)
    for new_node in part.nodes if last else part.nodes[:-1]:
        why = node_reasons(new_node, part, target)
        if why:
            return f"{new_node.op_type} {new_node.name}: {'; '.join(why)}"
    return ""


def _replace(graph: onnx.GraphProto, node: onnx.NodeProto, new: tuple[list[onnx.NodeProto], list, list]) -> None:
    nodes, inits, infos = new
    at = next(k for k, n in enumerate(graph.node) if list(n.output) == list(node.output))
    kept = list(graph.node)
    kept[at:at + 1] = nodes
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(inits)
    graph.value_info.extend(infos)
