"""Where a target's data lists an op that npuflow's compiler cannot lower (the DPUCV(2)DX8G targets'
argmax; cpu-int8's softmax until session 35 lowered it, ``test_newops3_softmax.py``), check places it on
the CPU, as compile does, and its
reason says the gap is npuflow's, not the target's: "Softmax has no integer lowering" alone read as the
target's verdict while ``npuflow targets cpu-int8`` lists softmax (round 24).  Ops a target does not list
(LayerNorm and InstanceNorm everywhere, Softmax on the DPU and the BPU) keep the target's reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _model(op: str, **attrs) -> object:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    inits, ins = [w], ["c"]
    if op in ("InstanceNormalization", "LayerNormalization"):
        size = 4 if op == "InstanceNormalization" else 8
        inits += [numpy_helper.from_array(np.ones(size, np.float32), "s"),
                  numpy_helper.from_array(np.zeros(size, np.float32), "b")]
        ins = ["c", "s", "b"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node(op, ins, ["y"], name="op", **attrs)]
    out_type = TensorProto.INT64 if op == "ArgMax" else TensorProto.FLOAT
    y = helper.make_tensor_value_info("y", out_type, None)
    model = helper.make_model(helper.make_graph(nodes, "t", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _placed(op: str, target: str, **attrs):
    report = npuflow.check(_model(op, **attrs), target)
    node = next(n for n in report.nodes if n.name == "op")
    return report.device_name(node), " ".join(node.reasons)


@pytest.mark.parametrize("op, target, kind, kernel, attrs", [
    ("ArgMax", "DPUCVDX8G_ISA3_C32B1", "argmax", None, {"axis": 1}),
])
def test_a_listed_op_without_a_lowering_says_the_gap_is_npuflows(op, target, kind, kernel, attrs):
    device, reason = _placed(op, target, **attrs)
    rule = npuflow.load_target(target).rule(kind)
    assert device == "CPU" and rule is not None
    assert reason.startswith(f"{op} has no integer lowering ({target} lists {kind} as {kernel or rule.kernel_type}; "
                             "npuflow's compiler has no integer program for it"), reason


@pytest.mark.parametrize("op, target", [("LayerNormalization", "cpu-int8"), ("InstanceNormalization", "cpu-int8"),
                                        ("Softmax", "DPUCZDX8G_ISA1_B4096"), ("InstanceNormalization", "bernoulli2")])
def test_an_op_the_target_does_not_list_keeps_the_targets_reason(op, target):
    device, reason = _placed(op, target, **({"axis": 1} if op == "Softmax" else {}))
    assert device == "CPU" and "implementation on" in reason and "lists" not in reason, reason
