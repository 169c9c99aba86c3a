"""``check`` places data movement where the quantizer quantizes it (``npuflow/check/followers.py``).

The conformance corpus found float models whose reshapes/slices ``check`` put on the accelerator
while the quantizer left them in float, so ``compile`` ran them on the CPU: YOLOv8n's DFL reshapes
on bernoulli2 and a Flatten before the output on cpu-int8 (the float tail of float-scale targets),
PP-OCRv4 rec's Reshape before a float Softmax, silero-vad's Unsqueeze after an ``If``, PP-OCR cls's
classifier bias Add (fused into its MatMul by ``check``, alone after quantization).  Each test
quantizes and compiles the small model and asserts that every node ``check`` places on the
accelerator is one ``compile`` lowers, and that the data movement went where the rule says.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import npuflow
from tests import onnx_builders as B

DPU = "DPUCZDX8G_ISA1_B4096"
FLOAT_SCALE = ["cpu-int8", "bernoulli2"]
X = [1, 4, 8, 8]


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i in model.graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.type.tensor_type.elem_type == TensorProto.BOOL:
            out[i.name] = np.array(True)
        else:
            out[i.name] = rng.normal(0, 1, dims).astype(np.float32)
    return out


def _placed(model: onnx.ModelProto, target: str) -> dict[str, str]:
    """``check``'s device per node, after asserting ``compile`` runs every NPU node on the accelerator."""
    report = npuflow.check(model, target)
    q = npuflow.quantize(model, [_feeds(model)], target=target, warn=False).model
    manifest = npuflow.compile(q, target).manifest
    on_cpu = {n for sg in manifest["subgraphs"] if sg.get("engine") == "onnx" for n in sg.get("nodes", [])}
    lost = [n.name for n in report.nodes if n.device == "NPU" and n.name in on_cpu]
    assert not lost, f"check places {lost} on the accelerator, compile runs them on the CPU: {manifest.get('notes')}"
    return {n.name: n.device for n in report.nodes}


def _conv_then(nodes, outputs, inputs=None) -> onnx.ModelProto:
    conv, w = B.conv_node("conv", "x", "c", 4, 4)
    return B.model([conv, *nodes], inputs or [B.vi("x", X)], outputs, [w, B.const("shape", np.array([1, 4, 64]))])


def _flatten_tail() -> onnx.ModelProto:
    return _conv_then([helper.make_node("Flatten", ["c"], ["y"], name="flat")], [B.vi("y", None)])


@pytest.mark.parametrize("target", FLOAT_SCALE)
def test_float_tail_runs_on_the_cpu_on_float_scale_targets(target):
    """dynamic_batch_width's Flatten before the output: no quantized op reads it."""
    placed = _placed(_flatten_tail(), target)
    assert placed["conv"] == "NPU" and placed["flat"] == "CPU"
    assert "float tail" in npuflow.check(_flatten_tail(), target).node("flat").reasons[-1]


def test_power_of_two_target_keeps_the_tail():
    """On a power-of-two target the quantizer quantizes the tail: it stays on the accelerator."""
    assert _placed(_flatten_tail(), DPU)["flat"] == "NPU"


@pytest.mark.parametrize("target", FLOAT_SCALE)
def test_follower_of_and_before_a_cpu_op(target):
    """PP-OCRv4 rec's Reshape before a float Softmax (a float-scale tail), and one after it."""
    conv2, w2 = B.conv_node("conv2", "r2", "y2", 4, 4)
    nodes = [helper.make_node("Reshape", ["c", "shape"], ["r"], name="before"),
             helper.make_node("Softmax", ["r"], ["s"], name="softmax", axis=-1),
             helper.make_node("Reshape", ["s", "back"], ["r2"], name="after"), conv2]
    m = _conv_then(nodes, [B.vi("y2", None)])
    m.graph.initializer.extend([w2, B.const("back", np.array(X))])
    placed = _placed(m, target)
    assert (placed["conv"], placed["before"], placed["softmax"], placed["after"], placed["conv2"]) == \
        ("NPU", "CPU", "CPU", "CPU", "NPU")


@pytest.mark.parametrize("target", [DPU, *FLOAT_SCALE])
def test_follower_of_an_if_runs_on_the_cpu(target):
    """silero-vad's Unsqueeze after an ``If`` (control flow runs in ONNX Runtime); a Reshape before it,
    not a Squeeze, which with the Unsqueeze would be an inverse pair the float passes cancel."""
    branch = [helper.make_graph([helper.make_node(op, ["c"], [f"b_{op}"])], op.lower(), [],
                                [B.vi(f"b_{op}", X)]) for op in ("Relu", "Neg")]
    conv2, w2 = B.conv_node("conv2", "u", "y", 4, 4)
    nodes = [helper.make_node("If", ["cond"], ["i"], name="if", then_branch=branch[0], else_branch=branch[1]),
             helper.make_node("Reshape", ["i", "chw"], ["sq"], name="squeeze"),
             helper.make_node("Unsqueeze", ["sq", "axes"], ["u"], name="unsqueeze"), conv2]
    inputs = [B.vi("x", X), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    m = _conv_then(nodes, [B.vi("y", None)], inputs)
    m.graph.initializer.extend([w2, B.const("axes", np.array([0])), B.const("chw", np.array(X[1:]))])
    placed = _placed(m, target)
    assert (placed["if"], placed["squeeze"], placed["unsqueeze"], placed["conv2"]) == ("CPU", "CPU", "CPU", "NPU")


def test_bias_add_after_matmul_is_the_fc_bias():
    """PP-OCR cls's classifier on DPUCAHX8L: ``MatMul(W) -> Add(vector)`` is one fully connected
    layer with an int32 bias (``passes/linear_bias.py``); the quantizer writes no quantize step
    between them, so the Add runs where the MatMul runs (it was judged alone as a 1x1 depthwise
    convolution the DPU does not have, and ran on the CPU)."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc_w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "fc_b"], ["y"], name="bias")]
    inits = [B.weight("w", (4, 4, 3, 3)), B.const("fc_w", rng.normal(0, 0.1, (4, 2)).astype(np.float32)),
             B.const("fc_b", np.array([0.1, -0.2], np.float32))]
    placed = _placed(B.model(nodes, [B.vi("x", X)], [B.vi("y", None)], inits), "DPUCAHX8L_ISA0")
    assert placed["matmul"] == "NPU" and placed["bias"] == "NPU"
