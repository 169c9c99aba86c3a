"""Output-only data movement stays float where quantizing it would join differently ranged tensors.

YOLOv8's boxes (pixels) beside its class scores (0..1): float-scale targets keep the output Concat
float; accelerator targets run it on the CPU when the scores come from the CPU (the checker's rule).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _head_model(sigmoid: bool = True) -> onnx.ModelProto:
    """x -> Conv -> boxes (range ~300) ; Conv -> Sigmoid -> scores (0..1) ; Concat -> y."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.normal(size=(4, 3, 1, 1)) * 100).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["boxes"], name="box_conv"),
        helper.make_node("Conv", ["x", "w2"], ["logits"], name="cls_conv"),
        helper.make_node("Sigmoid" if sigmoid else "Relu", ["logits"], ["scores"], name="cls_act"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head_concat", axis=1),
    ]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 8, 8])], initializer=[w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _calib(n: int = 8):
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_output_concat_of_scores_stays_float_and_scores_survive(target):
    q = npuflow.quantize(_head_model(), _calib(), target=target)
    ops = {n.name: n for n in q.model.graph.node}
    # the Concat reads dequantized tensors and writes the float graph output directly
    assert ops["head_concat"].output[0] == "y"
    assert not any(n.input and n.input[0] == "y" for n in q.model.graph.node)
    x = _calib(1)[0]
    ref = ort.InferenceSession(_head_model().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(q.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    scores_ref, scores_got = ref[:, 4:].ravel(), got[:, 4:].ravel()
    cos = float(scores_ref @ scores_got / np.linalg.norm(scores_ref) / np.linalg.norm(scores_got))
    assert cos > 0.99


def test_output_concat_of_accelerator_tensors_is_quantized_on_power_of_two_targets():
    # both inputs computed on the DPU (ReLU fuses into the Conv): the output leaves the chip as integers
    q = npuflow.quantize(_head_model(sigmoid=False), _calib(), target="DPUCZDX8G_ISA1_B4096")
    producers = {o: n for n in q.model.graph.node for o in n.output}
    # the graph output comes out of a dequantize step: the Concat itself was quantized
    assert producers["y"].op_type == "DequantizeLinear"
