"""``torch.maximum`` / ``torch.minimum`` of two tensors (ONNX ``Max``/``Min`` of two computed inputs).

Corner pooling (CornerNet), maxout and min/max feature fusions write them; before, both were "lowered only
as a clamp" and ran in float on the CPU on every target (new-user round 25, Open 4).  Now, where the target
lists an elementwise ``max``/``min`` (cpu-int8, bernoulli2's ``HzSElementwiseMax``), each operand's codes go
through a table onto the output grid and the program takes the larger (smaller) code: exact against ONNX
Runtime on the quantized model for any scales, since quantizing keeps order.  The DPUs list no ``max``:
check says so, compile agrees."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.numerics import dequantize, quantize, select_codes
from tests.unit.quant_nets import run, samples
from tests.unit.test_placement_agreement import compiled_devices

SHAPE = [1, 3, 8, 8]


def _model(op: str, broadcast: bool = False, after: str | None = None) -> onnx.ModelProto:
    """Two convs of different ranges (so different scales) -> ``op`` -> [``after``] -> Conv 1x1; with
    ``broadcast`` the second operand is the first conv's global average (``1 x 4 x 1 x 1``)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.8).astype(np.float32), "w1b"),
             numpy_helper.from_array((rng.standard_normal((2, 4, 1, 1)) * 0.3).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conva", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w1b"], ["b"], name="convb", pads=[1, 1, 1, 1])]
    second = "b"
    if broadcast:
        nodes.append(helper.make_node("GlobalAveragePool", ["b"], ["gb"], name="gap"))
        second = "gb"
    nodes.append(helper.make_node(op, ["a", second], ["m"], name="select"))
    head_in = "m"
    if after:
        nodes.append(helper.make_node(after, ["m"], ["r"], name="after"))
        head_in = "r"
    nodes.append(helper.make_node("Conv", [head_in, "w2"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _flow(model: onnx.ModelProto, target: str):
    """(check's device of ``select``, compile's side of every node, the quantized model, the compiled model)."""
    checked = npuflow.check(model, target)
    q = npuflow.quantize(model, samples(SHAPE, n=8), target=target, warn=False)
    compiled = npuflow.compile(q.model, target)
    return checked, compiled_devices(compiled), q.model, compiled


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
@pytest.mark.parametrize("op, broadcast, after", [("Max", False, None), ("Min", False, None), ("Max", True, None),
                                                  ("Max", False, "Relu")])
def test_two_tensor_max_min_run_on_the_accelerator_as_ort_computes_them(target, op, broadcast, after):
    checked, sides, q_model, compiled = _flow(_model(op, broadcast, after), target)
    assert checked.node("select").device == "NPU"
    assert sides["select"] == "ACC"
    assert {n.name: ("CPU" if n.device == "CPU" else "ACC") for n in checked.nodes} == \
        {n.name: sides.get(n.name) for n in checked.nodes}  # check = compile, node by node
    [lowered] = [o for sg in compiled.manifest["subgraphs"] for o in sg.get("ops", []) if o["name"] == "select"]
    assert (lowered["op"], lowered["kind"]) == ("select", op.lower())
    session = npuflow.Session(compiled)
    for x in samples(SHAPE, n=4, seed=7):
        assert np.array_equal(session.run({"x": x})["y"], run(q_model, {"x": x})[0])  # bit exact vs ORT


def test_two_tensor_max_stays_on_the_cpu_where_the_target_lists_no_max():
    target = "DPUCZDX8G_ISA1_B4096"
    checked, sides, _, _ = _flow(_model("Max"), target)
    node = checked.node("select")
    assert node.device == "CPU" and "no DPU implementation" in node.reasons[0]
    assert sides["select"] == "CPU" and sides["conva"] == sides["head"] == "ACC"


def test_select_codes_on_output_tables_equal_quantized_float_max_for_every_code_pair():
    """``Q(max(DQ_a(qa), DQ_b(qb))) = max(Q(DQ_a(qa)), Q(DQ_b(qb)))`` on all 256 x 256 pairs, scales and
    zero points all different (the exactness the lowering rests on)."""
    qa, qb = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    qa, qb = qa.astype(np.int8), qb.astype(np.int8)
    fa, fb = dequantize(qa, np.float32(0.0371), 3), dequantize(qb, np.float32(0.0113), -20)
    out = dict(scale=np.float32(0.0219), zero_point=-7, round_mode="half_even")
    for mode, ref in (("max", np.maximum), ("min", np.minimum)):
        want = quantize(ref(fa, fb), **out)
        got = select_codes(quantize(fa, **out), quantize(fb, **out), mode)
        assert np.array_equal(got, want)
