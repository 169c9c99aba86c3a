"""The QDQ writer: legalised float model + plan + parameters -> ``quantized_model.onnx``.

Implements docs/quantized-model-format.md exactly: quantize steps (standard ``QuantizeLinear``
or the ``ai.npuflow`` rounding functions of :mod:`npuflow.qdq`) and ``DequantizeLinear`` on
activations, integer initializers plus ``DequantizeLinear`` for constants, derived names
(``T_q``, ``T_dq``, ``W_quantized``, ``T_scale``, ``T_zero_point``), compute nodes untouched
except for their inputs, graph output names unchanged, ``metadata_props`` kept.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import qdq
from ..graph import GraphView, node_reads, rename_outer_reads
from ..model import tensor_shapes
from .assign import Assignment
from .params import TensorQuant
from .plan import QuantPlan

FORMAT_VERSION = "1"
MS_DOMAIN = "com.microsoft"

_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
         "uint16": TensorProto.UINT16, "int32": TensorProto.INT32}


def _scale_init(name: str, q: TensorQuant) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(q.scale, dtype=np.float32), name)


def _zp_init(name: str, q: TensorQuant) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(q.zero_point).astype(q.dtype), name)


def _dq_domain(q: TensorQuant) -> str:
    return MS_DOMAIN if q.storage_bits == 16 else ""


def export_qdq(model: onnx.ModelProto, plan: QuantPlan, assignment: Assignment, *, target_name: str,
               scale_type: str) -> onnx.ModelProto:
    """A new ModelProto in the quantized model format."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    params = assignment.params
    shapes = tensor_shapes(model)
    graph_outputs = {o.name for o in graph.output}
    producers = GraphView(graph).producer

    new_inits: list[onnx.TensorProto] = []
    head: list[onnx.NodeProto] = []  # constant DQs and graph-input Q/DQs
    after: dict[str, list[onnx.NodeProto]] = {}  # producer output -> Q/DQ nodes to emit after it
    value_info: list[onnx.ValueInfoProto] = []
    read_as: dict[str, str] = {}  # tensor -> name quantized consumers read
    float_read_as: dict[str, str] = {}  # tensor -> name float consumers read
    renamed_outputs: dict[str, str] = {}  # graph output -> new producer output name
    uses_ms = False

    for name, q in params.items():
        if name not in assignment.values:
            continue
        qname, dq = f"{name}_quantized", f"{name}_dq"
        new_inits += [numpy_helper.from_array(assignment.values[name].astype(q.dtype), qname),
                      _scale_init(f"{name}_scale", q), _zp_init(f"{name}_zero_point", q)]
        attrs = {"axis": q.axis} if q.scale.ndim == 1 and q.axis is not None else {}
        head.append(helper.make_node("DequantizeLinear", [qname, f"{name}_scale", f"{name}_zero_point"], [dq],
                                     name=dq, domain=_dq_domain(q), **attrs))
        uses_ms |= _dq_domain(q) == MS_DOMAIN
        read_as[name] = dq

    for name, point in plan.points.items():
        q = params.get(name)
        if q is None:
            continue
        src = name
        dq_out = f"{name}_dq"
        if name in graph_outputs and point.quantized_producer:
            src = f"{name}_float"
            renamed_outputs[name] = src
            dq_out = name
        dtype = q.dtype
        doc = None if point.quantized_producer else qdq.FLOAT_PRODUCER_DOC
        if qdq.uses_standard_quantize(q.round_mode, dtype):
            qnode = helper.make_node("QuantizeLinear", [src, f"{name}_scale", f"{name}_zero_point"], [f"{name}_q"],
                                     name=f"{name}_q", doc_string=doc)
        else:
            op = qdq.ensure_quantize_function(out, q.round_mode, dtype)
            qnode = helper.make_node(op, [src, f"{name}_scale", f"{name}_zero_point"], [f"{name}_q"],
                                     name=f"{name}_q", domain=qdq.DOMAIN, doc_string=doc)
        dqnode = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero_point"], [dq_out],
                                  name=f"{name}_dq", domain=_dq_domain(q))
        uses_ms |= _dq_domain(q) == MS_DOMAIN
        new_inits += [_scale_init(f"{name}_scale", q), _zp_init(f"{name}_zero_point", q)]
        (after.setdefault(name, []) if name in producers else head).extend([qnode, dqnode])
        read_as[name] = dq_out
        float_read_as[name] = dq_out if point.quantized_producer else name
        shape = shapes.get(name)
        value_info.append(helper.make_tensor_value_info(f"{name}_q", _ELEM[dtype], shape))
        if dq_out != name:
            value_info.append(helper.make_tensor_value_info(dq_out, TensorProto.FLOAT, shape))
        if src != name:
            value_info.append(helper.make_tensor_value_info(src, TensorProto.FLOAT, shape))

    nodes: list[onnx.NodeProto] = list(head)
    for node in list(graph.node):
        quantized = (node.name or node.output[0]) in plan.quantized
        mapping = read_as if quantized else float_read_as
        for k, t in enumerate(node.input):
            if t in mapping:
                node.input[k] = mapping[t]
        rename_outer_reads(node, mapping)  # If/Loop bodies read the same (dequantized) tensors
        emitted = []
        for k, o in enumerate(node.output):
            if o in renamed_outputs:
                node.output[k] = renamed_outputs[o]
            emitted += after.get(o, [])
        nodes.append(node)
        nodes.extend(emitted)
    del graph.node[:]
    graph.node.extend(nodes)

    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in node_reads(n)} | graph_outputs
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    vi = [v for v in graph.value_info if v.name not in renamed_outputs]
    del graph.value_info[:]
    graph.value_info.extend(vi + value_info)
    dropped = {t.name for t in model.graph.initializer} - used
    kept_inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(kept_inputs)

    if uses_ms and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _set_meta(out, {"npuflow.format_version": FORMAT_VERSION, "npuflow.target": target_name,
                    "npuflow.scale_type": scale_type})
    return out


def _set_meta(model: onnx.ModelProto, items: dict[str, str]) -> None:
    kept = [p for p in model.metadata_props if p.key not in items]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in items.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def to_plain_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``ai.npuflow`` quantize functions by ``QuantizeLinear`` (differs on exact ties only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.domain != qdq.DOMAIN:
            continue
        parsed = qdq.parse_function_name(node.op_type)
        dtype = parsed[1] if parsed else "int8"
        node.op_type = "QuantizeLinear"
        node.domain = MS_DOMAIN if dtype in ("int16", "uint16") else ""
    del out.functions[:]
    imports = [o for o in out.opset_import if o.domain != qdq.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(imports)
    if any(n.domain == MS_DOMAIN for n in out.graph.node) and not any(o.domain == MS_DOMAIN for o in imports):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out
