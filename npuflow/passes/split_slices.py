"""A ``Split`` the accelerator does not run, as one ``Slice`` per part where it runs slices.

torch's ``chunk``/``split`` export as ``Slice`` nodes from the TorchScript exporter and as one
``Split`` from the dynamo exporter (torch 2.9 on: the default).  DPUCZDX8G has no split operation
but strided slices (``DPU_StridedSlice``), so a Res2Net's four-way channel split ran on the CPU once
exported with the default exporter (round 20: 4 CPU round trips, 9 compiled subgraphs on
DPUCZDX8G_ISA1_B4096 against 1 with TorchScript's Slices), and bernoulli2's split needs channels
that divide by the number of parts (round 19b's MixConv: 32 into 12/10/10).  On an accelerator
target whose ``split`` rule is missing or rejects the node while its ``strided_slice`` rule
accepts the parts, each output becomes ``Slice(start, end)`` along the split axis: the same values,
exact.  A split along an axis of unknown size, or with parts that cannot be worked out, stays
(reported).
"""

from __future__ import annotations


import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import GraphView, attr_values, unique_name
from ..model import default_opset
from ..targets import Target
from ..targets.judge import rule_reasons
from ..value_info import inferred_dims, tensor_shapes
from .activations import _splice
from .fold_constants import frozen_view
from .target_rewrites import Rewrite, finish


_KIND = "split_as_slices"


def splits_as_slices(model: onnx.ModelProto, target: Target | None = None,
                     rewrites: list[Rewrite] | None = None,
                     static_inputs: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A new model with each ``Split`` ``target`` rejects and slices would run written as slices
    (module docstring); no target or a CPU target: unchanged.  What it wrote or left is appended
    to ``rewrites`` (``quant_info.json``'s ``algorithms.target_rewrites``).

    ``static_inputs``: the shape a dynamic graph is frozen at for check and compile; a split whose input
    has a symbolic dimension is judged at its size there (CoAtNet's ``q, k, v`` unbound along axis 0 of
    ``3 x B x ...`` with a dynamic batch ``B``: the target's channel formula read the name ``batch``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    splits = [n for n in out.graph.node if n.op_type == "Split" and not n.domain]
    if target is None or target.kind != "npu" or target.rule("strided_slice") is None or not splits:
        return out
    dims = inferred_dims(out)
    if static_inputs and any(not all(isinstance(d, int) for d in dims.get(n.input[0], ())) for n in splits):
        dims = {**dims, **tensor_shapes(frozen_view(out, static_inputs))}
    view = GraphView(out.graph)
    opset = default_opset(out)
    done = []
    for node in splits:
        name = node.name or node.output[0]
        shape = dims.get(node.input[0], ())
        axis = int(attr_values(node).get("axis", 0)) % max(len(shape), 1)
        size = shape[axis] if shape else None
        sizes = _part_sizes(node, view, size) if isinstance(size, int) else None
        if sizes is None:
            done.append(Rewrite(name, _KIND, False, "Split stays: the size of its axis or of its parts is not known"))
            continue
        channels = shape[1] if len(shape) >= 2 else shape[-1]
        if not isinstance(channels, int):
            done.append(Rewrite(name, _KIND, False, "Split stays: the size of its channel axis is not known"))
            continue
        split_params = {"axis": axis, "num_inputs": 1, "num_outputs": len(sizes),
                        "input_channel": channels, "output_channel": channels}
        rule = target.rule("split")
        if rule is not None and not rule_reasons(rule, split_params, target.hardware_names()):
            continue  # the target runs it as it is
        slice_params = {"stride_batch": 1, "stride_channel": 1, "axis": axis,
                        "input_channel": channels, "output_channel": channels}
        objections = rule_reasons(target.rule("strided_slice"), slice_params, target.hardware_names())
        if objections:
            done.append(Rewrite(name, _KIND, False, f"Split stays: {target.name} rejects its slices "
                                                    f"({'; '.join(objections)})"))
            continue
        _splice(out.graph, [node], _slices(out.graph, node, name, axis, sizes, opset))
        done.append(Rewrite(name, _KIND, True, f"Split into {sizes} along axis {axis} -> {len(sizes)} Slice"))
    finish(out.graph, done, rewrites)
    return out


def _part_sizes(node: onnx.NodeProto, view: GraphView, size: int) -> list[int] | None:
    """The parts' sizes along the axis: the ``split`` input (opset 13 on) or attribute, else equal
    parts (from opset 18 ``num_outputs``, the last one smaller where the size does not divide)."""
    given = attr_values(node).get("split")
    if given is None and len(node.input) > 1 and node.input[1]:
        value = view.const(node.input[1])
        if value is None:
            return None
        given = value.ravel().tolist()
    count = len(node.output)
    if given is None:
        part = -(-size // count)
        given = [part] * (count - 1) + [size - part * (count - 1)]
    sizes = [int(s) for s in given]
    return sizes if len(sizes) == count and sum(sizes) == size and min(sizes) > 0 else None


def _slices(graph: onnx.GraphProto, node: onnx.NodeProto, name: str, axis: int, sizes: list[int],
            opset: int) -> list[onnx.NodeProto]:
    """One ``Slice`` per used output of ``node``: ``[start, start + size)`` along ``axis``."""
    def const(suffix: str, value: int) -> str:
        t = unique_name(graph, f"{name}/{suffix}")
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), t))
        return t

    nodes, start = [], 0
    axes = const("axis", axis) if opset >= 10 else None
    for k, (out, size) in enumerate(zip(node.output, sizes)):
        if out:
            if opset >= 10:
                nodes.append(helper.make_node("Slice", [node.input[0], const(f"start{k}", start),
                                                        const(f"end{k}", start + size), axes], [out],
                                              name=f"{name}/part{k}"))
            else:
                nodes.append(helper.make_node("Slice", [node.input[0]], [out], name=f"{name}/part{k}",
                                              axes=[axis], starts=[start], ends=[start + size]))
        start += size
    return nodes
