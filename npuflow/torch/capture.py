"""Capture an ``nn.Module`` as a torch.fx graph, without asking the user to rewrite it.

``torch.fx`` symbolic tracing records every call: a module called twice appears as two nodes,
``a + b`` and ``a * b`` on tensors appear as ``operator.add``/``operator.mul`` nodes, so QAT can
give each its own quantizer (vai_q_pytorch needs functional adds turned into modules and forbids
reused modules).  Convolutions, linear layers and BatchNorms, including user subclasses such as
"same padding" convolutions, are kept as leaves so they can be swapped for QAT layers whole.
Layer subclasses whose ``forward`` adds work (static "same" padding) are traced through.
The module is traced in eval mode, so training-only branches (drop-connect) are not captured;
dropout modules stay modules and keep following ``train()``/``eval()``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..errors import NpuflowError

_LEAVES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Layers with torch's own forward stay whole; subclasses that add work to forward (a
        # "same padding" conv pads first) are traced through, so the padding becomes a graph
        # node and the functional conv is turned back into a module by prepare.py.
        for base in _LEAVES:
            if isinstance(m, base):
                return type(m).forward is _base_forward(m)
        return super().is_leaf_module(m, qualname)

    def create_arg(self, a):
        # numpy scalars in a call (onnx2torch's Slice steps, ONNX attributes) are recorded as the
        # Python numbers they equal; fx records only Python scalars.
        if isinstance(a, np.generic):
            a = a.item()
        return super().create_arg(a)


def _base_forward(m: nn.Module):
    for cls in type(m).__mro__:
        if cls.__module__.startswith("torch.nn") and "forward" in vars(cls):
            return vars(cls)["forward"]
    return None


def example_tuple(example_inputs) -> tuple:
    """Normalise ``example_inputs`` (a tensor or a sequence of tensors) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence):
        return tuple(example_inputs)
    raise NpuflowError("NPF_TORCH_BAD_INPUTS", reason=f"got {type(example_inputs).__name__}")


def require_module(module: object, onnx_instead: str) -> None:
    """``NPF_TORCH_BAD_INPUTS`` unless ``module`` is an ``nn.Module``; an ONNX model (a path, a
    ``ModelProto``, bytes) is told what takes it, ``onnx_instead``: users with an exported model
    reach for the torch API first (it read "module is a str, not an nn.Module")."""
    if isinstance(module, nn.Module):
        return
    onnx_like = isinstance(module, (onnx.ModelProto, bytes)) or (
        isinstance(module, (str, os.PathLike)) and Path(module).suffix.lower() == ".onnx")
    reason = f"module is a {type(module).__name__}, not an nn.Module"
    raise NpuflowError("NPF_TORCH_BAD_INPUTS", reason=f"{reason}; for an ONNX model use {onnx_instead}" if onnx_like
                       else reason)


def capture(module: nn.Module, example_inputs) -> fx.GraphModule:
    """Trace a copy of ``module`` (eval mode) and annotate every node with its output metadata."""
    require_module(module, "npuflow.torch.onnx_qat.qat_onnx(model, target, data, epochs=N) or `npuflow qat MODEL`")
    inputs = example_tuple(example_inputs)
    root = copy.deepcopy(module).eval()
    tracer = _Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(root)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for dynamic code
        raise NpuflowError(
            "NPF_TORCH_CAPTURE_FAILED", module=type(module).__name__, reason=_short(exc)
        ) from None
    gm = fx.GraphModule(root, graph, type(module).__name__)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:  # a shape/dtype mismatch between the inputs and the model
        raise NpuflowError("NPF_TORCH_BAD_INPUTS", reason=_short(exc)) from None
    return gm


def is_float_tensor(node: fx.Node) -> bool:
    """Whether the node produced one floating-point tensor when the example inputs ran."""
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
