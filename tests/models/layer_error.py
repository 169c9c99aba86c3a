"""Shared pieces of the tests that check AdaQuant scores what it writes: record each layer's
reported result, and measure the written layer's output error with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx

from npuflow.ort_session import open_session
from npuflow.quant.algorithms import fast_finetune as ff


def record_layer_results(monkeypatch) -> list[ff.LayerResult]:
    """Every ``LayerResult`` that fast_finetune's layer solver returns, in order."""
    results: list[ff.LayerResult] = []
    real_solve = ff._solve_layer

    def solve_layer(*args, **kwargs):
        results.append(real_solve(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(ff, "_solve_layer", solve_layer)
    return results


def written_error(quantized: onnx.ModelProto, name: str, float_model: onnx.ModelProto,
                  feeds: list[dict[str, np.ndarray]]) -> float:
    """Mean squared difference of ``quantized``'s tensor ``name`` from ``float_model``'s single
    output over ``feeds`` (no graph optimisation, so no fused reading of the QDQ model)."""
    session = open_session(quantized, level="disable")
    reference = open_session(float_model, level="disable")
    err = [(session.run([name], f)[0] - reference.run(None, f)[0]).astype(np.float64) ** 2 for f in feeds]
    return float(np.mean(np.concatenate([e.reshape(-1) for e in err])))
