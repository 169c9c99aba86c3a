"""What a pruned model costs: MACs and parameters, and the estimated latency on the target.

MAC counts do not predict speed on an accelerator (channels are processed in blocks of the
engine's parallelism, depthwise layers run on a slower engine, small layers are memory bound),
so when a target is given the model is exported to ONNX and priced by npuflow's performance
estimator, the same one ``npuflow perf`` uses.
"""

from __future__ import annotations

import io

import torch
from torch import nn

from ..targets import Target
from .groups import count_macs


class CostModel:
    def __init__(self, example_inputs, target: Target | None = None) -> None:
        self.example_inputs = example_inputs
        self.target = target

    def measure(self, model: nn.Module) -> dict[str, float]:
        macs, params = count_macs(model, self.example_inputs)
        cost = {"macs": macs, "params": float(params)}
        return cost


def export_onnx(model: nn.Module, example_inputs) -> bytes:
    """The model as ONNX bytes (legacy exporter, opset 17), for checking and estimating."""
    buf = io.BytesIO()
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    with torch.no_grad():
        torch.onnx.export(model.eval(), args, buf, opset_version=17, dynamo=False)
    return buf.getvalue()
