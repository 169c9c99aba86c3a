"""A Concat of inputs with very different ranges (newuser_flows27, finding 6): FFTNet concatenated a series of
+-5.8 with FFT amplitudes up to ~250 under one scale; on DPUCZDX8G the step was 2 and the series kept 7 codes,
held-out cosine 0.863 while quantize reported 0.9906, and nothing warned.  Now quantize reports
``NPF_QUANT_SHARED_SCALE_RANGE`` naming the node, the inputs' calibrated ranges and the codes the narrow one
keeps; a Concat of comparable ranges stays quiet."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _concat_model(factor: float):
    """x (1x16) -> [x, |x| * factor] concatenated -> MatMul -> y: the second input is ``factor`` times wider."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(factor, np.float32), "k"),
             numpy_helper.from_array(rng.normal(0, 0.1, (32, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="amp"),
             helper.make_node("Mul", ["a", "k"], ["wide"], name="gain"),
             helper.make_node("Concat", ["x", "wide"], ["cat"], name="join", axis=1),
             helper.make_node("MatMul", ["cat", "w"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = [{"x": rng.uniform(-1, 1, (1, 16)).astype(np.float32)} for _ in range(8)]
    return model, samples


def _shared(model, samples, target):
    q = npuflow.quantize(model, samples, target=target, warn=False)
    return [w for w in q.calibration_warnings if w.code == "NPF_QUANT_SHARED_SCALE_RANGE"], q


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_concat_of_a_50x_wider_input_warns_with_the_codes_left(target):
    found, q = _shared(*_concat_model(50.0), target)
    assert len(found) == 1, [w.code for w in q.calibration_warnings]
    w = found[0]
    assert "Concat node 'join'" in w.message and "'x' -" in w.message and "'wide' " in w.message
    codes = int(w.message.split("keeps about ")[1].split(" ")[0])
    # x spans 2 of the joined range: -1..50 (cpu-int8, asymmetric uint8) or -50..50 (symmetric, power of two)
    assert codes == (10 if target == "cpu-int8" else 6), w.message
    assert "keep_float: [join]" in w.hint
    assert any(x["code"] == "NPF_QUANT_SHARED_SCALE_RANGE" for x in q.report.to_json()["warnings"])


def test_concat_of_comparable_ranges_does_not_warn():
    found, _ = _shared(*_concat_model(4.0), "DPUCZDX8G_ISA1_B4096")
    assert found == []
