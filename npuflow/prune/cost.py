"""What a pruned model costs: MACs and parameters, and the estimated latency on the target.

MAC counts do not predict speed on an accelerator (channels are processed in blocks of the
engine's parallelism, depthwise layers run on a slower engine, small layers are memory bound),
so when a target is given the model is exported to ONNX and priced by npuflow's performance
estimator, the same one ``npuflow perf`` uses.
"""

from __future__ import annotations

import io

import onnx
import torch
from torch import nn

from ..perf.model_perf import perf
from ..targets import Target
from .groups import count_macs


class CostModel:
    def __init__(self, example_inputs, target: Target | None = None) -> None:
        self.example_inputs = example_inputs
        self.target = target

    def measure(self, model: nn.Module, latency: bool = True) -> dict[str, float]:
        """MACs and parameters; with a target (and ``latency``) also ``latency_ms``.

        The latency estimate exports and checks the model, so searches that only need MACs
        pass ``latency=False``.
        """
        macs, params = count_macs(model, self.example_inputs)
        cost = {"macs": macs, "params": float(params)}
        if self.target is not None and latency:
            cost["latency_ms"] = estimated_latency_ms(model, self.example_inputs, self.target)
        return cost


def estimated_latency_ms(model: nn.Module, example_inputs, target: Target) -> float:
    """Latency of one frame on one core of ``target`` from npuflow's static estimator.

    CPU-placed parts are not timed (``measure_cpu=False``): pruning changes the accelerator
    part, and host timings would only add noise to the comparison.
    """
    proto = onnx.load_from_string(export_onnx(model, example_inputs))
    return float(perf(proto, target, measure_cpu=False).latency_ms)


def export_onnx(model: nn.Module, example_inputs) -> bytes:
    """The model as ONNX bytes (legacy exporter, opset 17), for checking and estimating."""
    buf = io.BytesIO()
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    with torch.no_grad():
        torch.onnx.export(model.eval(), args, buf, opset_version=17, dynamo=False)
    return buf.getvalue()
