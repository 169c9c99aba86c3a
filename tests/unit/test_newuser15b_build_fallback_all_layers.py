"""An accuracy target no quantized model reaches, with ``allow_cpu_fallback`` (new-user round 15b).

A CI config with ``min_similarity: 0.99999999`` and ``allow_cpu_fallback: True``: the fallback
moved every layer to float on the CPU, so the build's compile step failed with
``NPF_COMPILE_NOT_QUANTIZED`` ("Compile the quantized_model.onnx written by npuflow quantize").
Now that fallback is not kept: the target is reported as not reached and the best quantized model
is built, as the docs say of a target not reached."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import npuflow
from npuflow.analyze.auto_quant import auto_quantize
from npuflow.graph import is_qdq

REPO = Path(__file__).resolve().parents[2]
DPU = "DPUCZDX8G_ISA1_B4096"


def test_a_fallback_to_all_float_is_not_kept_and_the_model_compiles():
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:4].reshape(-1, 1, 1, 28, 28)
    calib = [(d / 255.0).astype(np.float32) for d in digits]
    result = auto_quantize(str(REPO / "examples/mnist_cnn.onnx"), calib, DPU, min_similarity=0.99999999,
                           time_budget_s=0, allow_cpu_fallback=True)
    last = result.steps[-1]
    assert last.name == "CPU fallback" and not last.kept and "every quantized layer" in last.note
    assert not result.met and result.cpu_fallback is None
    assert any(is_qdq(n) for n in result.quantized.model.graph.node)
    assert any(sg.on_accelerator for sg in npuflow.compile(result.quantized, DPU).subgraphs)
