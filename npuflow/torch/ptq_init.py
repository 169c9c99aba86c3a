"""Start label-free QAT from the PTQ model (:func:`init_from_ptq`): the trainable module that
onnx2torch made from the optimised float graph takes the PTQ model's scales, zero points and
integer weights, so training begins where post-training quantization ended and the first
forward already computes the PTQ model's integers.  Split out of :mod:`.onnx_qat`, which trains.
"""

from __future__ import annotations

import copy
import operator
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import numpy_helper

from .. import model as model_io
from ..graph import GraphView
from .layers import QatWeighted
from .qat import QatModel
from .quantizer import FakeQuantizer, SharedQuantizer

log = logging.getLogger(__name__)


def init_from_ptq(qat: QatModel, converted: fx.GraphModule, graph: onnx.ModelProto,
                  qdq: onnx.ModelProto) -> dict[str, int]:
    """Give ``qat`` the PTQ model's scales and integer weights, matched by ONNX tensor name.

    The QDQ model names each quantized tensor ``T`` by ``T_scale``/``T_zero_point`` (and
    ``T_quantized`` for constants, docs/quantized-model-format.md); the converted module's
    ``onnx_mapping`` gives each torch module's ONNX tensors.  Returns how many activation
    quantizers and weighted layers took PTQ values (the rest keep their observers' values), how
    many tensors stay float, and how many quantizers no ONNX tensor could be found for (``unmapped``:
    warned, since the QAT start then differs from the PTQ model; PP-OCRv4 rec has one, a ``torch.add``
    the converter's trace leaves without its module).
    """
    inits = {t.name: t for t in qdq.graph.initializer}
    mapping = onnx_mappings(converted)
    gm = qat.graph_module
    inputs = [n.name for n in model_io.graph_inputs(graph)]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    producers = GraphView(graph)
    quantize_steps = {n.output[0] for n in qdq.graph.node}
    counts = {"activations": 0, "weights": 0}
    unquantized: list[fx.Node] = []  # quantizers of tensors PTQ keeps in float (nodes on the CPU)
    unmapped: list[str] = []  # quantizers whose ONNX tensor the converter's mapping does not name
    template: FakeQuantizer | None = None  # an activation quantizer at a PTQ scale, to copy

    produced = produced_tensors(gm, mapping)

    def tensor_of(src: fx.Node) -> str | None:
        if src in placeholders:
            return inputs[placeholders.index(src)]
        return produced.get(src)

    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, FakeQuantizer) and not mod.weight:
            tensor = tensor_of(node.args[0])
            if tensor is not None and f"{tensor}_scale" in inits and f"{tensor}_q" in quantize_steps:
                _set_quantizer(mod, _array(inits[f"{tensor}_scale"]), _array(inits[f"{tensor}_zero_point"]))
                counts["activations"] += 1
                template = template if template is not None or mod.group_leader() is not mod else mod
            elif tensor is not None:
                unquantized.append(node)
            else:
                unmapped.append(str(node.target))
        elif isinstance(mod, QatWeighted) and node.target in mapping:
            onnx_node = producers.producer_node(mapping[node.target].outputs[0])
            if onnx_node is not None and _set_weighted(mod, list(onnx_node.input), inits):
                counts["weights"] += 1
    counts["constants"] = _set_constants(gm, converted, inits)
    counts["float_tensors"] = _keep_float(gm, unquantized)
    covered = {tensor_of(n.args[0]) for n in gm.graph.nodes if n.op == "call_module"
               and isinstance(q := gm.get_submodule(n.target), (FakeQuantizer, SharedQuantizer)) and not getattr(q, "weight", False)}
    missing = [n.input[0] for n in qdq.graph.node if n.output[0] == f"{n.input[0]}_q" and n.input[0] not in covered]
    counts["added"] = _quantize_missing(gm, missing, produced, inits, template)
    counts["float_reads"] = _float_readers(gm, qdq, mapping, tensor_of)
    counts["unmapped"] = len(unmapped)
    if unmapped:
        log.warning("%d activation quantizer(s) of the QAT model have no ONNX tensor to take the PTQ scale from "
                    "(%s): they keep their observers' scales, so training starts from a model that differs from "
                    "the PTQ model there", len(unmapped), ", ".join(unmapped[:5]) + (", ..." if len(unmapped) > 5 else ""))
    return counts


def _quantize_missing(gm: fx.GraphModule, tensors: Sequence[str], produced: Mapping[fx.Node, str],
                      inits: Mapping[str, onnx.TensorProto], template: FakeQuantizer | None) -> int:
    """Quantize the tensors the PTQ model quantizes and ``prepare_qat`` did not: where a float
    part on the CPU hands a tensor back to the DPU through a pass-through op (PP-OCRv4 rec's
    attention: ``Squeeze``/``Reshape`` outputs feeding a quantized ``Mul``/``MatMul``), the PTQ
    model quantizes the pass-through op's output, while the QAT model's quantizer for it, on
    the float producer, was removed with the other float tensors.  Each gets a copy of
    ``template`` (an activation quantizer of the same model: same bits, tie rule, scale type)
    at the PTQ scale.  Returns how many were added."""
    producer = {tensor: node for node, tensor in produced.items()}
    added = 0
    for tensor in tensors:
        node = producer.get(tensor)
        if node is None or template is None or f"{tensor}_scale" not in inits:
            continue
        quantizer = copy.deepcopy(template)
        quantizer._leader = []
        quantizer.name = tensor
        name = f"npuflow_aq_ptq_{node.name}"
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            qn = gm.graph.call_module(name, (node,))
        qn.meta = dict(node.meta)
        node.replace_all_uses_with(qn, delete_user_cb=lambda user, qn=qn: user is not qn)
        _set_quantizer(quantizer, _array(inits[f"{tensor}_scale"]), _array(inits[f"{tensor}_zero_point"]))
        added += 1
    if added:
        gm.graph.lint()
        gm.recompile()
    return added


def _float_readers(gm: fx.GraphModule, qdq: onnx.ModelProto, mapping: Mapping[str, Any],
                   tensor_of: Callable[[fx.Node], str | None]) -> int:
    """Let the nodes that read a quantized tensor's float value in the PTQ model read it in float.

    ``prepare_qat`` makes every user of a quantized tensor read the quantized value; the PTQ
    model quantizes a tensor for its DPU consumers and lets the float part on the CPU read the
    float value (PP-OCRv4 rec's swish ``x * sigmoid(x)``: the ``Mul`` reads ``x`` quantized, the
    ``Sigmoid`` branch on the CPU reads it in float).  Returns how many uses were re-pointed."""
    view = GraphView(qdq)
    moved = 0
    for qn in [n for n in gm.graph.nodes if n.op == "call_module"]:
        q = gm.get_submodule(qn.target)
        tensor = tensor_of(qn.args[0])
        if not isinstance(q, FakeQuantizer) or q.weight or tensor is None:
            continue
        consumers = {c.output[0] for c in view.consumer_nodes(tensor) if c.output}
        if f"{tensor}_q" not in consumers:  # a float tensor: every reader reads it in float already
            continue
        readers = consumers - {f"{tensor}_q"}
        for user in list(qn.users):
            path = _module_path(user)
            if path in mapping and mapping[path].outputs[0] in readers:
                user.replace_input_with(qn, qn.args[0])
                moved += 1
    if moved:
        gm.graph.lint()
        gm.recompile()
    return moved


def _set_constants(gm: fx.GraphModule, converted: fx.GraphModule, inits: Mapping[str, onnx.TensorProto]) -> int:
    """Give the constant operands of element-wise nodes (PP-LCNet's learnable affine ``x * a + b``
    after each hard-swish) the PTQ model's int8 values.  The PTQ model quantizes every constant a
    DPU node reads; without this the student multiplies by the float constant, and its codes drift
    from the PTQ model's from the first block on.  onnx2torch stores initializers as buffers named
    ``initializers.onnx_initializer_K``: the converted module's call arguments, in the order of its
    ``onnx_mapping.inputs``, say which ONNX initializer each buffer holds.  Returns how many took PTQ values."""
    onnx_names: dict[str, str] = {}
    for node in converted.graph.nodes:
        mapping = getattr(converted.get_submodule(node.target), "onnx_mapping", None) if node.op == "call_module" else None
        if mapping is None:
            continue
        for arg, onnx_name in zip(node.args, mapping.inputs):
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                onnx_names[str(arg.target)] = onnx_name
    done: set[str] = set()
    for node in gm.graph.nodes:
        target = str(node.target)
        if node.op != "get_attr" or target not in onnx_names or target in done:
            continue
        buffer = gm.get_buffer(target)
        value = _dequantized(inits, onnx_names[target], buffer.shape) if buffer.is_floating_point() else None
        if value is not None:
            with torch.no_grad():
                buffer.copy_(torch.from_numpy(value[0]))
            done.add(target)
    return len(done)


def _keep_float(gm: fx.GraphModule, quantizer_nodes: list[fx.Node]) -> int:
    """Remove the activation quantizers of tensors the PTQ model keeps in float (what the target
    places on the CPU), with the pass-through re-quantize steps that follow them, so the QAT
    model quantizes exactly where the deployed PTQ model does.  A quantizer whose scale a
    conv/linear layer reads for its bias stays.  Returns how many were removed."""
    read_by_layers = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    removed = 0
    for node in quantizer_nodes:
        name = str(node.target)
        if name in read_by_layers:
            continue
        mod = gm.get_submodule(name)
        steps = [n for n in gm.graph.nodes if n.op == "call_module"
                 and isinstance(gm.get_submodule(n.target), SharedQuantizer) and gm.get_submodule(n.target)._source[0] is mod]
        for step in [*steps, node]:
            step.replace_all_uses_with(step.args[0])
            gm.graph.erase_node(step)
        removed += 1
    if removed:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return removed


def _module_path(node: fx.Node) -> str | None:
    """The onnx2torch module (= ONNX node) a captured fx node came from."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    return next(reversed(stack)) if stack else None


def _last_node_of_module(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Module path -> the last fx node it produced (its output: earlier ones are internal values)."""
    last: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method"):
            path = _module_path(node)
            if path is not None and not isinstance(_get(gm, node), FakeQuantizer):
                last[path] = node
    return last


def onnx_mappings(converted: fx.GraphModule) -> dict[str, Any]:
    """Module path -> onnx2torch's ``onnx_mapping`` (the ONNX node's input and output names)."""
    return {name: m.onnx_mapping for name, m in converted.named_modules() if hasattr(m, "onnx_mapping")}


def produced_tensors(gm: fx.GraphModule, mapping: Mapping[str, Any]) -> dict[fx.Node, str]:
    """fx node of the QAT graph -> the ONNX tensor it holds (``mapping``: :func:`onnx_mappings`):
    a module's last node for a one-output ONNX node; for several outputs (``Split``: YOLOv8n's
    C2f chunks) the module returns a tuple, and output ``i`` is the ``getitem`` of it at ``i``."""
    produced: dict[fx.Node, str] = {}
    for path, node in _last_node_of_module(gm).items():
        outputs = list(mapping[path].outputs) if path in mapping else []
        if len(outputs) == 1:
            produced[node] = outputs[0]
        elif outputs:
            for user in node.users:
                if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int) \
                        and 0 <= user.args[1] < len(outputs):
                    produced[user] = outputs[user.args[1]]
    return produced


def _get(gm: fx.GraphModule, node: fx.Node) -> Any:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _array(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def _set_quantizer(q: FakeQuantizer, scale: np.ndarray, zero_point: np.ndarray) -> None:
    """Freeze ``q`` at a PTQ scale (learnable: the log2 threshold or step size that gives it)."""
    s = torch.tensor(np.array(scale, dtype=np.float32)).reshape(q.scale.shape)
    q.scale.copy_(s)
    q.zero_point.copy_(torch.tensor(np.array(zero_point).astype(np.int32)).reshape(q.zero_point.shape))
    if q.learnable and q.power_of_two:
        q.log2_threshold.data.copy_(torch.log2(s) + (q.spec.bits - 1))
    elif q.learnable:
        q.step_size.data.copy_(s)
    q.freeze()


def _dequantized(inits: Mapping[str, onnx.TensorProto], name: str, shape: torch.Size) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(float values, scale, zero point)`` of a PTQ constant, shaped like the torch parameter."""
    if f"{name}_quantized" not in inits:
        return None
    codes = _array(inits[f"{name}_quantized"]).astype(np.float32)
    scale = _array(inits[f"{name}_scale"]).astype(np.float32)
    zp = _array(inits[f"{name}_zero_point"]).astype(np.float32)
    if scale.ndim == 1 and codes.ndim > 1:  # per channel along the output axis (ONNX axis 0 for Conv)
        view = [1] * codes.ndim
        view[0] = -1
        values = (codes - zp.reshape(view)) * scale.reshape(view)
    else:
        values = (codes - zp) * scale
    if tuple(values.shape) != tuple(shape) and tuple(values.T.shape) == tuple(shape):
        values = values.T  # Gemm with transB=0 became a Linear with the transposed weight
    if tuple(values.shape) != tuple(shape):
        return None
    return np.asarray(values, dtype=np.float32), scale, zp  # a 0-d constant stays an array (ufuncs return scalars)


def _set_weighted(layer: QatWeighted, onnx_inputs: Sequence[str], inits: Mapping[str, onnx.TensorProto]) -> bool:
    """Give a conv/linear layer the PTQ integer weight and bias values, and the weight scale."""
    if layer.bn is not None or len(onnx_inputs) < 2:
        return False
    module = layer.module
    weight = _dequantized(inits, onnx_inputs[1], module.weight.shape)
    if weight is None:
        return False
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight[0]))
        if len(onnx_inputs) > 2 and module.bias is not None:
            bias = _dequantized(inits, onnx_inputs[2], module.bias.shape)
            if bias is not None:
                module.bias.copy_(torch.from_numpy(bias[0]))
    _set_quantizer(layer.weight_quant, weight[1], weight[2])
    return True


# --- batching ------------------------------------------------------------------------------------
