"""A compiled ``.npuf`` seen as a model the estimator can cost.

The file holds integer programs for NPU subgraphs (one op per fused layer, with its kind, attrs,
weight blobs and tensor shapes) and ONNX graphs for CPU subgraphs.  :func:`model_and_placement`
rewrites each integer op as the equivalent ONNX node (same shapes, weights as shape-only
initializers) and appends the CPU graphs as they are, so the same geometry and cost code serves
ONNX files and compiled files, and the subgraph names match the runtime's events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..placement import Device, NodePlacement, plugin_device


#: Integer-program op -> ONNX op with the same cost (geometry), see :mod:`npuflow.perf.layers`.
_ONNX_OP = {
    "conv": "Conv", "conv_transpose": "ConvTranspose", "matmul": "Gemm", "matmul2": "MatMul",
    "maxpool": "MaxPool", "avgpool": "AveragePool", "concat": "Concat",
    "quantize": "QuantizeLinear", "dequantize": "DequantizeLinear",
}
_GLOBAL = {"global_avg_pool": "GlobalAveragePool", "global_max_pool": "GlobalMaxPool"}
_ELTWISE = {"eltwise_mul": "Mul"}


def _elem_type(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _node_for(op: dict, weight_names: list[str]) -> onnx.NodeProto:
    kind, name, attrs = op["kind"], op["name"], op.get("attrs", {})
    if kind in _GLOBAL:
        op_type = _GLOBAL[kind]
    elif op["op"] == "eltwise":
        op_type = _ELTWISE.get(kind, "Add")
    elif op["op"] == "select":  # an elementwise Max / Min of two tensors
        op_type = kind.title()
    else:
        op_type = _ONNX_OP.get(op["op"], "".join(p.title() for p in op["op"].split("_")))
    a: dict[str, Any] = {}
    if op_type in ("Conv", "ConvTranspose"):
        a = {"group": int(attrs.get("group", 1)), "strides": list(attrs.get("strides", [1, 1]))}
    elif op_type in ("MaxPool", "AveragePool"):
        a = {"kernel_shape": list(attrs.get("kernel", [1, 1])), "strides": list(attrs.get("strides", [1, 1]))}
    return helper.make_node(op_type, [*op["inputs"], *weight_names], list(op["outputs"]), name=name, **a)


def npuf_units(path: str | Path, model: str | None = None) -> list[tuple[str, str, Any]]:
    """What ``perf`` estimates in a ``.npuf``: ``(name, title, CompiledModel)`` per model (the one
    named, else every model of a packed file) and per compiled shape set, since each program has
    its own subgraphs, shapes and so its own latency.  ``name`` is a plain report folder name."""
    from ..compiler import CompiledModel
    from ..compiler.compiled import shape_sets_text

    models = [CompiledModel.load(path, model)] if model else list(CompiledModel.load_all(path).values())
    units = []
    for m in models:
        shapes = m.input_shapes
        for k in range(len(shapes)):
            several = len(shapes) > 1
            name = f"{m.name}_program{k + 1}" if several else m.name
            title = f"{m.name} ({shape_sets_text([shapes[k]])})" if several else m.name
            units.append((name, title, m.program(k) if several else m))
    return units


def model_and_placement(compiled: Any) -> tuple[onnx.ModelProto, dict[str, NodePlacement]]:
    """(model, placement) of a ``CompiledModel``; NPU subgraph names are the runtime's names."""
    man = compiled.manifest
    nodes, inits, infos, opsets, functions = [], [], {}, {}, []
    placement: dict[str, NodePlacement] = {}
    for name, t in man.get("tensors", {}).items():
        infos[name] = helper.make_tensor_value_info(name, _elem_type(t["dtype"]), t["shape"])
    for sg in man["subgraphs"]:
        if sg["engine"] == "integer":
            for op in sg.get("ops", []):
                weights = []
                for role in ("w",):
                    blob = op.get("blobs", {}).get(role)
                    if blob:
                        arr = compiled.blob(blob)
                        # shape only: the cost model needs the weight's size, not its values
                        inits.append(TensorProto(name=blob, data_type=TensorProto.INT8, dims=list(arr.shape)))
                        weights.append(blob)
                node = _node_for(op, weights)
                nodes.append(node)
                placement[node.name] = NodePlacement(Device.NPU, sg["name"], op["kind"])
        else:
            sub = onnx.load_from_string(compiled.blob(sg["onnx"]))
            for o in sub.opset_import:
                opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
            functions.extend(f for f in sub.functions if all(f.name != g.name for g in functions))
            inits.extend(sub.graph.initializer)
            for vi in [*sub.graph.input, *sub.graph.value_info, *sub.graph.output]:
                infos.setdefault(vi.name, vi)
            device = plugin_device(sg["plugin"]) if sg["engine"] == "plugin" else Device.CPU
            for i, n in enumerate(sub.graph.node):
                if not n.name:
                    n.name = f"{sg['name']}_{n.op_type}_{i}"
                nodes.append(n)
                placement[n.name] = NodePlacement(device, sg["name"], n.op_type)
    opsets.setdefault("", 17)
    graph_inputs = [infos[i["name"]] for i in compiled.inputs if i["name"] in infos]
    graph_outputs = [infos[o["name"]] for o in compiled.outputs if o["name"] in infos]
    io = {v.name for v in [*graph_inputs, *graph_outputs]}
    graph = helper.make_graph(nodes, man["model"]["name"] or "model", graph_inputs, graph_outputs, inits,
                              value_info=[v for k, v in infos.items() if k not in io])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.functions.extend(functions)
    model.ir_version = 10
    return model, placement
