"""quantize's node table says where a node kept in float for a near-zero divisor runs: the CPU.

New-user round 28b, DCCRN-lite on bernoulli2: ``quant/divisors.py`` kept ``/Sqrt, /Add_1, /Add,
/Tanh`` in float (``/Div`` divides by a magnitude calibrated 0.000107 .. 25.3, 0 on an 8-bit
grid), but the node table still listed ``/Tanh`` on the BPU (subgraph 3) from the float model's
placement, and its count (16 CPU) disagreed with compile's (19).  The table now marks every node
the final plan leaves in float on the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from tests.unit.test_placement_agreement import compiled_devices

FLOAT_KEPT = {"mag_eps", "mag", "gain", "gained"}


def _ratio_model() -> onnx.ModelProto:
    """``y = Conv(tanh(|z|) * re / |z|)``, ``|z| = sqrt(re^2 + im^2 + 1e-8)``: DCCRN's mask ratio."""
    rng = np.random.default_rng(0)
    consts = {"Wr": rng.normal(size=(4, 4, 3, 3)) * 0.3, "Wi": rng.normal(size=(4, 4, 3, 3)) * 0.3,
              "Wo": rng.normal(size=(4, 4, 1, 1)) * 0.3, "eps": np.array(1e-8)}
    nodes = [
        helper.make_node("Conv", ["x", "Wr"], ["re"], name="conv_re", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "Wi"], ["im"], name="conv_im", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["re", "re"], ["re2"], name="re_sq"),
        helper.make_node("Mul", ["im", "im"], ["im2"], name="im_sq"),
        helper.make_node("Add", ["re2", "im2"], ["mag2"], name="mag_sq"),
        helper.make_node("Add", ["mag2", "eps"], ["mag2e"], name="mag_eps"),
        helper.make_node("Sqrt", ["mag2e"], ["m"], name="mag"),
        helper.make_node("Tanh", ["m"], ["t"], name="gain"),
        helper.make_node("Mul", ["t", "re"], ["tr"], name="gained"),
        helper.make_node("Div", ["tr", "m"], ["r"], name="ratio"),
        helper.make_node("Conv", ["r", "Wo"], ["y"], name="conv_out"),
    ]
    graph = helper.make_graph(
        nodes, "ratio", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calibration() -> list[dict[str, np.ndarray]]:
    """Samples whose left half is silent (|z| = 1e-4 there, the divisor's smallest value)."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(8):
        x = rng.normal(size=(1, 4, 8, 8)).astype(np.float32) * 3
        x[..., :4] = 0.0
        out.append({"x": x})
    return out


@pytest.mark.parametrize("target", ["bernoulli2", "cpu-int8"])
def test_the_node_table_puts_the_float_divisor_chain_on_the_cpu(target):
    q = npuflow.quantize(_ratio_model(), _calibration(), target, warn=False)
    on = {r.node: r.on for r in q.report.rows}
    assert {n: on[n] for n in FLOAT_KEPT} == {n: "CPU" for n in FLOAT_KEPT}
    compiled = compiled_devices(npuflow.compile(q.model, target))
    table = {n: ("CPU" if side == "CPU" else "ACC") for n, side in on.items() if n in compiled and side}
    assert table == {n: compiled[n] for n in table}


def test_check_says_the_divisor_placement_depends_on_the_data():
    report = npuflow.check(_ratio_model(), "bernoulli2")
    notes = {n.name: n.messages for n in report.nodes}
    may_move = {n for n, ms in notes.items() if any("depends on the data" in m and "ratio" in m for m in ms)}
    # quantize stopped at mag_eps on these samples (re^2 + im^2 reaches 0, no 8-bit step lost); without the
    # data, mag_sq may be a float producer too (a one-signed sum of squares that stays above 0)
    assert may_move == {"mag_sq", "mag_eps", "gain", "gained"}, may_move
    assert FLOAT_KEPT - {"mag"} <= may_move
