"""Round 22 (DS-CNN keyword spotting): a layer the target cannot run is left in float by the quantizer,
and compile's note named the consequence ("constant 'w' is not a quantized initializer") where check
named the limit ("kernel 10x4 outside [1,7]x[1,7]" on bernoulli2).  Compile's note for a node it
cannot lower is now check's reason wherever check puts that node on the CPU.  Since session 32 the stride-2
10x4 conv runs on the BPU (``passes/wide_conv.py``); the same kernel with stride 1 has no exact form there."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _kws_front(kernel: tuple[int, int], stride: int = 2) -> onnx.ModelProto:
    """DS-CNN's front: Conv (kernel, stride) -> Relu -> 3x3 Conv -> Relu -> GlobalAveragePool."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.2, (8, 1, *kernel)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2")
    pads = [kernel[0] // 2, kernel[1] // 2 - 1, kernel[0] // 2, kernel[1] // 2 - 1]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="front", strides=[stride] * 2, pads=pads),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["y"], name="gap")]
    graph = helper.make_graph(nodes, "kws", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 49, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _compiled(kernel: tuple[int, int], target: str, tmp_path, monkeypatch, stride: int = 2):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 1, 49, 10)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_kws_front(kernel, stride), feeds, target=target)
    return q.model, npuflow.compile(q.model, target)


def _note(compiled, node: str) -> str:
    return next(n for n in compiled.notes if n.startswith(f"{node} ("))


def test_a_kernel_the_bpu_cannot_run_is_noted_with_the_kernel_limit(tmp_path, monkeypatch):
    model, compiled = _compiled((10, 4), "bernoulli2", tmp_path, monkeypatch, stride=1)
    reasons = {n.name: n.reasons for n in npuflow.check(model, "bernoulli2").nodes}
    front = _note(compiled, "front")
    assert "kernel 10x4 outside" in front, front
    assert front.endswith("; ".join(reasons["front"])), (front, reasons["front"])
    assert "fused into front" in _note(compiled, "relu1")
    assert not any(n.startswith("conv2 (") for n in compiled.notes)


def test_the_dpu_runs_the_same_kernel_so_it_has_no_note(tmp_path, monkeypatch):
    _, compiled = _compiled((10, 4), "DPUCZDX8G_ISA1_B4096", tmp_path, monkeypatch)
    assert not any(n.startswith(("front (", "relu1 (")) for n in compiled.notes), compiled.notes


def test_a_kernel_in_range_runs_on_the_bpu(tmp_path, monkeypatch):
    _, compiled = _compiled((6, 4), "bernoulli2", tmp_path, monkeypatch)
    assert not any(n.startswith(("front (", "relu1 (")) for n in compiled.notes), compiled.notes
