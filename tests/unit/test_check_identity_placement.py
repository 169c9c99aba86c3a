"""``Identity`` nodes between a layer and its reader (paddle2onnx writes one after most ops: PP-OCRv6 det
small of rapidocr 3.10.0, 147 of them, round 26b): the quantizer's float passes remove them
(``passes/remove_identity``) before placing, so check of the float model judges the graph without them
(``passes.optimize.FLOAT_PASSES`` marks the step ``check``).  Before, check kept them: a HardSigmoid(0.2, 0.5)
after ``Conv -> Add(bias) -> Identity`` read no layer, the target rewrite that folds its parameters into the
layer left it, and check put it on the CPU, which compile ran on the DPU (PP-OCRv6 det: 8 HardSigmoids on the
CPU, 16 DPU subgraphs in check, 14 in the compiled model); and the second of two chained Identities before a
CPU op went to the CPU with no reason given (13 in PP-OCRv6 det, before each exact GELU)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check import CPU, NPU

DPU = "DPUCZDX8G_ISA1_B4096"


def _const(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _paddle_like() -> onnx.ModelProto:
    """Conv -> Add(bias) -> Identity -> HardSigmoid(0.2, 0.5) -> Conv -> Identity -> Identity -> exact GELU -> Conv."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n) for n, s in
             (("w1", (8, 3, 3, 3)), ("b1", (1, 8, 1, 1)), ("w2", (8, 8, 1, 1)), ("w3", (4, 8, 1, 1)))]
    inits += [_const("sqrt2", 1.4142135), _const("one", 1.0), _const("half", 0.5)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b1"], ["a"], name="bias1"),
             helper.make_node("Identity", ["a"], ["ai"], name="id1"),
             helper.make_node("HardSigmoid", ["ai"], ["h"], name="hsig", alpha=0.2, beta=0.5),
             helper.make_node("Conv", ["h", "w2"], ["c2"], name="conv2"),
             helper.make_node("Identity", ["c2"], ["c2a"], name="id2"),
             helper.make_node("Identity", ["c2a"], ["c2b"], name="id3"),
             helper.make_node("Div", ["c2b", "sqrt2"], ["d"], name="gelu_div"),
             helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="gelu_add"),
             helper.make_node("Mul", ["c2b", "p"], ["m"], name="gelu_mul"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="gelu_half"),
             helper.make_node("Conv", ["g", "w3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hard_sigmoid_behind_an_identity_is_judged_as_compile_lowers_it():
    model = _paddle_like()
    r = npuflow.check(model, DPU)
    assert r.node("hsig").device == NPU
    assert not [n.name for n in r.nodes if n.op_type == "Identity"]  # removed, as the quantized model has them
    assert all(n.reasons or n.fused_into or n.device != CPU for n in r.nodes), \
        [n.name for n in r.nodes if n.device == CPU and not (n.reasons or n.fused_into)]
    rng = np.random.default_rng(1)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(model, samples, target=DPU)
    devices = [str(getattr(s, "device", s)) for s in npuflow.compile(quantized.model, DPU).subgraphs]
    assert sum(not d.endswith("CPU") for d in devices) == r.summary["npu_subgraphs"] == 2
