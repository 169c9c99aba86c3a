"""Graph helpers shared by the accuracy algorithms: weight layers, initializers, tensor capture.

A *weight layer* is a ``Conv`` or ``Gemm`` whose weight is a constant.  The algorithms read and
write its weights as numpy arrays and need intermediate tensors (layer inputs and outputs) from
calibration runs; :func:`capture` streams them through ONNX Runtime one batch at a time, so
memory stays bounded by what the caller keeps from each batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ...model import outer_reads, tensor_elem_types
from ...ort_session import open_session
from ..calibrate import run_ahead

Feed = Mapping[str, np.ndarray]


@dataclass
class WeightLayer:
    """A Conv/Gemm/MatMul node with a constant weight, seen as ``(Cout, Cin/groups, *kernel)``."""

    node: onnx.NodeProto
    weight: str          # name of the tensor feeding the weight input (initializer or DQ output)
    bias: str | None
    groups: int
    trans_b: bool = False  # Gemm(transB=0)/MatMul store (Cin, Cout); we always hand out (Cout, Cin)

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def is_depthwise(self) -> bool:
        return self.node.op_type == "Conv" and self.groups > 1


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def get_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    """An initializer as a numpy array (a copy)."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t).copy()
    raise KeyError(name)


def set_array(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace an initializer's data in place, keeping its name and dtype."""
    for t in model.graph.initializer:
        if t.name == name:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            t.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
            return
    raise KeyError(name)


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Conv/Gemm/MatMul nodes whose weight is an initializer, in graph (topological) order.

    Initializers used by more than one node are left out: changing them for one layer would
    silently change another.
    """
    inits = initializers(model)
    cons = consumers(model)
    layers = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if n.op_type != "Conv" and (attr(n, "transA", 0) or len(inits[n.input[1]].dims) != 2):
            continue
        if len(cons.get(n.input[1], [])) != 1:
            continue
        bias = n.input[2] if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2] in inits else None
        if bias is not None and len(cons.get(bias, [])) != 1:
            continue
        layers.append(WeightLayer(
            n, n.input[1], bias, int(attr(n, "group", 1)) if n.op_type == "Conv" else 1,
            trans_b=bool(attr(n, "transB", 0)) if n.op_type == "Gemm" else n.op_type == "Conv",
        ))
    return layers


def layer_weight(model: onnx.ModelProto, layer: WeightLayer) -> np.ndarray:
    """Weight as ``(Cout, Cin/groups, *kernel)`` float32 (Gemm: ``(Cout, Cin)``)."""
    w = get_array(model, layer.weight).astype(np.float32)
    return w if layer.trans_b else w.T.copy()


def set_layer_weight(model: onnx.ModelProto, layer: WeightLayer, w: np.ndarray) -> None:
    set_array(model, layer.weight, w if layer.trans_b else w.T)


def layer_bias(model: onnx.ModelProto, layer: WeightLayer, cout: int) -> np.ndarray:
    if layer.bias is None:
        return np.zeros(cout, np.float32)
    return get_array(model, layer.bias).astype(np.float32).reshape(-1)


def set_layer_bias(model: onnx.ModelProto, layer: WeightLayer, b: np.ndarray) -> None:
    """Write a bias, adding a bias input (and initializer) to the node when it had none."""
    if layer.bias is None:
        name = f"{layer.name}.npuflow_bias"
        model.graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), name))
        if layer.node.op_type == "Gemm":
            if len(layer.node.input) == 2:
                layer.node.input.append(name)
            else:
                layer.node.input[2] = name
        else:
            layer.node.input.append(name)
        layer.bias = name
    else:
        set_array(model, layer.bias, b)


def upstream(model: onnx.ModelProto, names: Sequence[str], known: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of ``model`` cut down to the nodes that compute ``names`` (its graph outputs).

    The walk back stops at graph inputs and at ``known`` tensors, which become graph inputs of
    the slice (the caller feeds values it already has).  A node with subgraphs (If, Loop) also
    depends on every outer tensor its subgraphs read.
    """
    made_by = producers(model)
    known = set(known) - set(names)
    needed, stack, keep = set(), list(names), set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        node = made_by.get(t)
        if node is not None and t not in known and id(node) not in keep:
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
            stack.extend(outer_reads(node))
    types = tensor_elem_types(model)

    def value_info(t: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None)

    graph = helper.make_graph(
        [n for n in model.graph.node if id(n) in keep], model.graph.name,
        [i for i in model.graph.input if i.name in needed and i.name not in known]
        + [value_info(t) for t in sorted(known & needed)],
        [value_info(n) for n in names],
        [t for t in model.graph.initializer if t.name in needed],
    )
    return helper.make_model(graph, opset_imports=model.opset_import, functions=model.functions,
                             ir_version=model.ir_version)


def session(model: onnx.ModelProto, outputs: Sequence[str]) -> ort.InferenceSession:
    """An ORT session (graph optimisations off, so intermediate tensors exist) exposing ``outputs``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    types = tensor_elem_types(m)
    for name in outputs:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
            have.add(name)
    return open_session(m, level="disable", threads=2, what="run")


def capture(
    model: onnx.ModelProto,
    feeds: Iterable[Feed],
    names: Sequence[str],
    on_batch: Callable[[int, dict[str, np.ndarray]], None],
) -> None:
    """Run ``model`` on each feed and hand ``{name: tensor}`` for ``names`` to ``on_batch``."""
    sess = session(model, names)
    input_names = {i.name for i in sess.get_inputs()}

    def run(_: int, feed: Feed) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(list(names), {n: v for n, v in feed.items() if n in input_names})))

    for k, _, values in run_ahead(run, feeds):
        on_batch(k, values)


def run_outputs(model: onnx.ModelProto, feeds: Iterable[Feed], *, spinning: bool = True) -> list[list[np.ndarray]]:
    """All graph outputs for each feed (optimised session: used for end-to-end comparisons);
    ``spinning=False`` for worker processes sharing the cores (scheduling only, same numbers)."""
    sess = open_session(model, level="all", threads=2, spinning=spinning, what="run")
    input_names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {n: v for n, v in f.items() if n in input_names}) for f in feeds]
