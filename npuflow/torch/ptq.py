"""Post-training quantization of an ``nn.Module``: export to ONNX, then the ONNX quantizer.

There is one quantizer: the module is exported (TorchScript exporter, opset 17, the example
inputs' shapes) and handed to :func:`npuflow.quantize`, so the result is the same
``QuantizedModel`` an ONNX user gets and compiles like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .capture import example_tuple, require_module
from .export import default_output_names, torch_to_onnx


def export_float(module: nn.Module, example_inputs, input_names: list[str] | None = None,
                 output_names: list[str] | None = None):
    """The float module as an ONNX model (eval mode; the module is restored afterwards)."""
    require_module(module, "npuflow.quantize(model, calib_data, target)")
    inputs = example_tuple(example_inputs)
    names = input_names or (["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*inputs)
        outs = output_names or default_output_names(out)
        return torch_to_onnx(module, inputs, names, outs)
    finally:
        module.train(was_training)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_numpy(v) for v in value)
    return value


def calibration_samples(calib_data: Any, example_inputs) -> Any:
    """Torch calibration data -> numpy samples shaped like the example inputs.

    A single tensor with more rows than the example batch is split into example-sized batches,
    so ``calib_data=images[:256]`` works for a model exported with batch 1; a tensor with one more
    dimension than the example is a stack of samples (``calib_data=torch.stack(batches)``).
    """
    inputs = example_tuple(example_inputs)
    if isinstance(calib_data, torch.Tensor) and len(inputs) == 1:
        batch = inputs[0].shape[0] if inputs[0].dim() else 1
        arr = calib_data.detach().cpu().numpy().astype(np.float32)
        if arr.shape[1:] == tuple(inputs[0].shape):
            return list(arr)
        if arr.shape[1:] == tuple(inputs[0].shape[1:]) and arr.shape[0] != batch and arr.shape[0] % batch == 0:
            return [arr[i:i + batch] for i in range(0, arr.shape[0], batch)]
        return [arr]
    if isinstance(calib_data, (str, np.ndarray, Mapping)):
        return _to_numpy(calib_data)
    if isinstance(calib_data, Iterable):
        return [_to_numpy(s) for s in calib_data]
    return calib_data


def quantize(module: nn.Module, example_inputs, calib_data: Any, target, config=None, *,
             input_names: list[str] | None = None, output_names: list[str] | None = None):
    """Quantize ``module`` for ``target``; returns :class:`npuflow.quant.QuantizedModel`.

    The ONNX outputs are ``output_names``, else a returned dict's keys, ``output_i`` for a tuple or
    list, ``output`` for one tensor; inputs ``input_names``, else ``input`` / ``input_i``."""
    from ..quant import quantize as quantize_onnx

    model = export_float(module, example_inputs, input_names, output_names)
    return quantize_onnx(model, calibration_samples(calib_data, example_inputs), target, config)
