"""A GELU whose ``1`` is shared with a quantized ``1 - mask`` still compiles as one table.

New-user round 26, TinyBERT (torch dynamo export, opset 18): one initializer ``1.0`` feeds the
attention mask's ``1 - m`` and both GELUs' ``1 + erf(x / sqrt 2)``.  The quantizer quantized the
``Sub``'s constant and the export gave every quantized reader its dequantized copy, so the
compiler's GELU match (a float scalar ``1``) failed: on bernoulli2 the GELUs ran in float on the
CPU and the compiled model had 9 BPU subgraphs where ``check`` said 7 (cpu-int8: 10 for 8).
``canonical_gelus`` now gives each GELU its own copy of a constant it shares.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.gelu import canonical_gelus


def _bert_like() -> onnx.ModelProto:
    """``y = (gelu(x W1 + b1) W2 + b2) * (1 - m)``, the ``1`` one initializer for the mask and the GELU."""
    rng = np.random.default_rng(0)
    consts = {"W1": rng.normal(size=(16, 32)) * 0.3, "b1": rng.normal(size=32) * 0.1,
              "W2": rng.normal(size=(32, 16)) * 0.3, "b2": rng.normal(size=16) * 0.1,
              "one": np.array(1.0), "sqrt2": np.array(np.sqrt(2.0)), "half": np.array(0.5)}
    nodes = [
        helper.make_node("Sub", ["one", "m"], ["keep"], name="mask_sub"),
        helper.make_node("MatMul", ["x", "W1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h"], name="lin1"),
        helper.make_node("Div", ["h", "sqrt2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        helper.make_node("Mul", ["half", "e1"], ["e2"], name="gelu_half"),
        helper.make_node("Mul", ["h", "e2"], ["g"], name="gelu"),
        helper.make_node("MatMul", ["g", "W2"], ["y0"], name="mm2"),
        helper.make_node("Add", ["y0", "b2"], ["y1"], name="lin2"),
        helper.make_node("Mul", ["y1", "keep"], ["y"], name="masked"),
    ]
    graph = helper.make_graph(
        nodes, "bert_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 8, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calibration() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(size=(1, 8, 16)).astype(np.float32),
             "m": (rng.random((1, 8, 1)) > 0.3).astype(np.float32)} for _ in range(8)]


def test_each_gelu_gets_its_own_constants():
    model = canonical_gelus(_bert_like())
    readers = {n.name: list(n.input) for n in model.graph.node}
    assert readers["mask_sub"][0] == "one"
    assert "one" not in readers["gelu_add"] and "half" in readers["gelu_half"]  # unshared ones stay


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
def test_the_gelu_stays_on_the_accelerator_as_check_says(target):
    model = _bert_like()
    q = npuflow.quantize(model, _calibration(), target)
    compiled = npuflow.compile(q.model, target)
    on_cpu = {n for s in compiled.subgraphs if not s.on_accelerator for n in s.nodes}
    assert not on_cpu & {"gelu_div", "gelu_erf", "gelu_add", "gelu_half", "gelu"}, on_cpu
    assert sum(s.on_accelerator for s in compiled.subgraphs) == npuflow.check(model, target).summary["npu_subgraphs"]
