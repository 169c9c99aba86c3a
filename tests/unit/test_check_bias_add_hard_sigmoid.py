"""A HardSigmoid after a layer's separate bias ``Add`` (paddle2onnx's form): the quantizer's float passes
fold the ``Add`` into the layer and the HardSigmoid's parameters into it (the target rewrite), so on
DPUCZDX8G the compiled model runs it on the DPU; check of the float model judges the same graph
(``passes.optimize.FLOAT_PASSES`` marks the affine fold ``check``).  Before, check listed the ``Add`` and
placed the HardSigmoid on the CPU: PP-OCR mobile v2.0 cls, 9 HardSigmoids on the CPU in 10 DPU
subgraphs where the compiled model has 1."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check import NPU
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


def _conv_add_hard_sigmoid() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n) for n, s in
             (("w1", (8, 3, 3, 3)), ("b1", (1, 8, 1, 1)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b1"], ["a"], name="bias1"),
             helper.make_node("HardSigmoid", ["a"], ["h"], name="hsig", alpha=0.2, beta=0.5),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _compiled_sides(model, samples, shapes=None) -> tuple[int, int]:
    """DPU and CPU subgraph counts of the compiled model."""
    quantized = npuflow.quantize(model, samples, target=DPU, input_shapes=shapes)
    devices = [str(getattr(s, "device", s)) for s in npuflow.compile(quantized.model, DPU).subgraphs]
    cpu = sum(d.endswith("CPU") for d in devices)
    return len(devices) - cpu, cpu


def test_hard_sigmoid_after_bias_add_is_judged_as_compile_lowers_it():
    model = _conv_add_hard_sigmoid()
    r = npuflow.check(model, DPU)
    assert r.node("hsig").device == NPU and all(n.device == NPU for n in r.nodes)
    assert "bias1" not in [n.name for n in r.nodes]  # folded into conv1, as the quantized model has it
    rng = np.random.default_rng(1)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    assert _compiled_sides(model, samples) == (r.summary["npu_subgraphs"], 0)


def test_ppocr_cls_float_check_agrees_with_compile_on_the_dpu():
    shape = [1, 3, 48, 192]
    r = npuflow.check(str(fixture_models.ppocr_cls()), DPU, input_shapes={"x": shape})
    hard_sigmoids = [n for n in r.nodes if n.op_type == "HardSigmoid"]
    assert len(hard_sigmoids) == 9 and all(n.device == NPU for n in hard_sigmoids)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(4)]
    dpu, _ = _compiled_sides(str(fixture_models.ppocr_cls()), samples, {"x": shape})
    assert dpu == r.summary["npu_subgraphs"]
