"""An optimised float ONNX model as a trainable torch module, through onnx2torch (``npuflow qat``).

onnx2torch (1.5.15, installed ``--no-deps``) converts each ONNX node into a torch module; four of
its forms cannot be traced by torch.fx, which ``prepare_qat`` captures with, so they are settled
at conversion from the static shapes and types the graph already has (:func:`_literal_reshapes`,
:func:`_float_division`, :func:`_static_resizes`).  Every failure is a coded error: a missing package
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
from ..graph import GraphView, attr_values


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
        _static_resizes(module, graph)
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


class StaticResize(torch.nn.Module):
    """An ONNX ``Resize`` whose output the graph fixes, as one ``F.interpolate`` call with constant
    arguments; the ONNX node's other inputs (roi, scales, sizes) are accepted and ignored."""

    def __init__(self, mode: str, align_corners: bool | None, size: tuple[int, ...] | None,
                 scale: tuple[float, ...] | None) -> None:
        super().__init__()
        self.mode, self.align_corners, self.size, self.scale = mode, align_corners, size, scale

    def forward(self, x: torch.Tensor, *_constant_inputs: Any, **_named_constant_inputs: Any) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=self.size, scale_factor=self.scale, mode=self.mode,
                                               align_corners=self.align_corners)


#: ONNX Resize mode -> torch interpolate mode, by the number of spatial axes
_TORCH_MODES = {("nearest", 1): "nearest", ("nearest", 2): "nearest", ("nearest", 3): "nearest",
                ("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear", ("cubic", 2): "bicubic"}


def _static_resizes(module: fx.GraphModule, graph: onnx.ModelProto) -> None:
    """Each ``Resize`` becomes a :class:`StaticResize`.  onnx2torch's reads the input's rank and
    the scales' values at run time (``input.dim()``, ``scales.tolist()``), which torch.fx cannot
    trace (PP-OCRv4 det's and YOLOv8n's upsampling failed QAT's capture); here both are constants
    of the graph.  ONNX's coordinate and rounding modes are many, torch's few: each replacement is
    run once beside ONNX Runtime on that node alone, and a Resize whose output torch does not
    reproduce is ``NPF_QAT_UNSUPPORTED_OP`` naming the node, not a student that trains on other
    values than the deployed model computes."""
    from onnx2torch.node_converters.resize import OnnxResize, OnnxResizeV10

    view = GraphView(graph)
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 13)
    for name, m in list(module.named_modules()):
        if not isinstance(m, (OnnxResize, OnnxResizeV10)):
            continue
        node = view.producer_node(m.onnx_mapping.outputs[0])
        consts = {i: _constant(view, i) for i in node.input[1:] if i}
        replacement, reason = _static_resize(node, view.shapes, consts, opset)
        if replacement is not None:
            reason = _differs_from_onnx(replacement, node, view.shapes[node.input[0]], consts, opset)
        if reason:
            raise NpuflowError("NPF_QAT_UNSUPPORTED_OP", ops="Resize", nodes=f"{node.name or node.output[0]} (Resize: {reason})")
        replacement.onnx_mapping = m.onnx_mapping
        parent, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, attr, replacement)
    module.recompile()


def _constant(view: GraphView, tensor: str) -> np.ndarray | None:
    """An initialiser's or a ``Constant`` node's value (``None`` for a computed tensor)."""
    value = view.const(tensor)
    producer = view.producer_node(tensor) if value is None else None
    if producer is not None and producer.op_type == "Constant":
        tensor_value = attr_values(producer).get("value")
        value = numpy_helper.to_array(tensor_value) if isinstance(tensor_value, onnx.TensorProto) else None
    return value


def _static_resize(node: onnx.NodeProto, shapes: dict[str, list[int]], consts: dict[str, np.ndarray | None],
                   opset: int) -> tuple[StaticResize | None, str]:
    """The :class:`StaticResize` of ``node``, or ``None`` and why it has none."""
    attrs = attr_values(node)
    in_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not in_shape or not out_shape or any(d <= 0 for d in [*in_shape, *out_shape]):
        return None, "its input or output shape is not static"
    mode = _TORCH_MODES.get((attrs.get("mode", "nearest"), len(in_shape) - 2))
    if mode is None:
        return None, f"mode {attrs.get('mode', 'nearest')!r} on {len(in_shape) - 2} spatial axes"
    if in_shape[:2] != out_shape[:2]:
        return None, "it resizes the batch or channel axis"
    align = None if mode == "nearest" else attrs.get("coordinate_transformation_mode") == "align_corners"
    # ``scales`` (input 2; input 1 before opset 11) keeps ONNX's source coordinate x / scale;
    # without them the output size is what the graph fixes
    at = 1 if opset < 11 else 2
    scales = consts.get(node.input[at]) if len(node.input) > at and node.input[at] else None
    if scales is not None and scales.size:
        return StaticResize(mode, align, None, tuple(float(v) for v in scales[2:])), ""
    return StaticResize(mode, align, tuple(out_shape[2:]), None), ""


def _differs_from_onnx(resize: StaticResize, node: onnx.NodeProto, in_shape: list[int],
                       consts: dict[str, np.ndarray | None], opset: int) -> str:
    """Why ``resize`` does not compute what ONNX Runtime computes for ``node`` ('' when it does),
    on one random input of the node's static shape."""
    from onnx import helper

    from ..ort_session import open_session

    x = np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)
    missing = [i for i in node.input[1:] if i and consts.get(i) is None]
    if missing:
        return f"its input {missing[0]!r} is not a constant"
    inits = [numpy_helper.from_array(consts[i], i) for i in node.input[1:] if i]
    one = onnx.NodeProto()
    one.CopyFrom(node)
    one.output[:] = ["y"]
    proto = helper.make_model(
        helper.make_graph([one], "resize", [helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits),
        opset_imports=[helper.make_opsetid("", opset)])
    expected = open_session(proto, what="check a Resize").run(None, {node.input[0]: x})[0]
    with torch.no_grad():
        got = resize(torch.from_numpy(x)).numpy()
    if got.shape != expected.shape:
        return f"torch's output shape {list(got.shape)} is not ONNX's {list(expected.shape)}"
    err = float(np.abs(got - expected).max()) if got.size else 0.0
    return "" if err <= 1e-5 else f"torch's {resize.mode} interpolation differs from ONNX's by up to {err:.3g}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
