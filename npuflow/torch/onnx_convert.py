"""An optimised float ONNX model as a trainable torch module, through onnx2torch (``npuflow qat``).

onnx2torch (1.5.15, installed ``--no-deps``) converts each ONNX node into a torch module; three of
its forms cannot be traced by torch.fx, which ``prepare_qat`` captures with, so they are settled
at conversion from the static shapes and types the graph already has (:func:`_literal_reshapes`,
:func:`_float_division`).  Every failure is a coded error: a missing package
(``NPF_QAT_DEPENDENCY_MISSING``) or an operator onnx2torch cannot convert (``NPF_QAT_UNSUPPORTED_OP``,
naming the op and the nodes).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import numpy_helper

from .. import model as model_io
from ..errors import NpuflowError


def load_onnx2torch() -> Callable[[onnx.ModelProto], fx.GraphModule]:
    """``onnx2torch.convert`` with coded errors (``NPF_QAT_DEPENDENCY_MISSING``, ``NPF_QAT_UNSUPPORTED_OP``).

    onnx2torch imports torchvision at import time for its NonMaxSuppression and RoiAlign
    converters only; PyPI's torchvision is built against the CUDA torch and does not import next
    to the CPU build npuflow pins.  When torchvision does not import, a placeholder stands in for
    that import alone, and converting one of those two operators is ``NPF_QAT_UNSUPPORTED_OP``.
    """
    try:
        import onnx2torch
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision" and not (exc.name or "").startswith("torchvision."):
            raise NpuflowError("NPF_QAT_DEPENDENCY_MISSING", package=exc.name or "onnx2torch") from None
        onnx2torch = _import_without_torchvision()
    except RuntimeError:  # a torchvision built for another torch fails while registering its ops
        onnx2torch = _import_without_torchvision()
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    def convert(graph: onnx.ModelProto) -> fx.GraphModule:
        graph = _literal_reshapes(safe_shape_inference(graph))  # some converters read input shapes
        bad = _unconvertible(graph, get_converter, OnnxGraph)
        if bad:
            raise NpuflowError("NPF_QAT_UNSUPPORTED_OP", ops=", ".join(sorted({op for op, _, _ in bad})),
                               nodes="; ".join(f"{name} ({op}: {reason})" for op, name, reason in bad[:5]))
        try:
            module = onnx2torch.convert(graph, attach_onnx_mapping=True)
        except Exception as exc:  # the converters raise many types for graphs they refuse
            raise NpuflowError("NPF_QAT_UNSUPPORTED_OP", ops="(whole graph)", nodes=_first_line(exc)) from None
        _float_division(module, graph)
        return module

    return convert


def _import_without_torchvision():
    """Import onnx2torch with a placeholder torchvision whose operators refuse to run."""
    def unavailable(*_args: Any, **_kwargs: Any) -> None:
        raise NpuflowError("NPF_QAT_UNSUPPORTED_OP", ops="NonMaxSuppression/RoiAlign",
                           nodes="torchvision, which onnx2torch runs them with, does not import here")

    placeholder = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = unavailable
    placeholder.ops = ops
    names = ("torchvision", "torchvision.ops")
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    for name in [n for n in sys.modules if n.startswith("onnx2torch") or n.startswith("torchvision")]:
        del sys.modules[name]  # a half-finished import of either is retried from the start
    sys.modules.update({"torchvision": placeholder, "torchvision.ops": ops})
    try:
        import onnx2torch
    except ModuleNotFoundError as exc:
        raise NpuflowError("NPF_QAT_DEPENDENCY_MISSING", package=exc.name or "onnx2torch") from None
    finally:
        for name in names:  # as it was: absent, blocked (None) or a module
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)
    return onnx2torch


def _unconvertible(graph: onnx.ModelProto, get_converter, onnx_graph_cls) -> list[tuple[str, str, str]]:
    """``(op, node, reason)`` for every node onnx2torch has no converter for, or whose converter refuses it."""
    opsets = {o.domain: o.version for o in graph.opset_import}
    og = onnx_graph_cls(graph.graph)
    bad = []
    for name, node in og.nodes.items():
        try:
            get_converter(domain=node.domain, operation_type=node.operation_type,
                          version=opsets.get(node.domain, 1))(node, og)
        except Exception as exc:  # NotImplementedError for unknown ops and unsupported attributes
            bad.append((node.operation_type, name, _first_line(exc)))
    return bad


def _literal_reshapes(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Reshape targets with ``0`` (copy that input dimension) become the output's static shape.
    onnx2torch reads the copied dimension from the input at run time, which torch.fx cannot
    trace; the graph has static shapes, so the answer is known."""
    inits = {t.name: t for t in graph.graph.initializer}
    shapes = model_io.tensor_shapes(graph)
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    for node in out.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        target = numpy_helper.to_array(inits[node.input[1]])
        static = shapes.get(node.output[0])
        if (target == 0).any() and static and all(d > 0 for d in static):
            name = f"{node.output[0]}/npuflow_static_shape"
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(static, dtype=np.int64), name))
            node.input[1] = name
    return out


def _float_division(module: fx.GraphModule, graph: onnx.ModelProto) -> None:
    """Float ``Div`` nodes call ``torch.div`` directly.  onnx2torch chooses float or integer
    division at run time (``is_floating_point()``), which torch.fx cannot trace; the ONNX types
    already say which it is."""
    from onnx2torch.node_converters.binary_math_operations import _onnx_div

    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.value_info, *graph.graph.output]}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    for m in module.modules():
        mapping = getattr(m, "onnx_mapping", None)
        if getattr(m, "math_op_function", None) is _onnx_div and mapping and types.get(mapping.outputs[0]) in floats:
            m.math_op_function = torch.div


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
