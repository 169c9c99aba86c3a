"""A fixed-point convolution on ``ConvInteger`` and the table after it (bernoulli2's SiLU) in a
fused run: the passes between the two integer kernels (issue 19, batch 8 on bernoulli2).

Every convolution of YOLOv8n on bernoulli2 is ``ConvInteger``, its int32 bias, the fixed-point
requantisation, the SiLU table and the next ``ConvInteger``; the requantisation's float64 product
is cast from the int32 accumulator at once (not through float32), the table is indexed by the
requantised codes as they are held (centred on the zero point: negative indices count from the
table's end, no ``Sub`` pass), and writes the uint8 bytes the next ``ConvInteger`` reads (no
float32 entries and cast).  The codes stay the kernels' bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import numerics as nm
from npuflow import ort_kernels
from npuflow.runtime import fused, fused_fixed, fused_graph

TARGET = "bernoulli2"


def _silu_model() -> onnx.ModelProto:
    """Conv 3x3 (8 -> 16) + SiLU, Conv 1x1 (16 -> 8) + SiLU, Conv 1x1 (8 -> 4): YOLOv8's
    convolution blocks, per-channel weights, which bernoulli2 requantises in fixed point."""
    rng = np.random.default_rng(71)
    shapes = {"w1": (16, 8, 3, 3), "w2": (8, 16, 1, 1), "w3": (4, 8, 1, 1)}
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n) for n, s in shapes.items()]
    inits += [numpy_helper.from_array(rng.normal(0, 0.2, s[0]).astype(np.float32), "b" + n[1]) for n, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
    for k, c in ((1, "c1"), (2, "c2")):
        nodes += [helper.make_node("Sigmoid", [c], [f"s{k}"], f"sig{k}"),
                  helper.make_node("Mul", [c, f"s{k}"], [f"a{k}"], f"silu{k}")]
        nodes.append(helper.make_node("Conv", [f"a{k}", f"w{k + 1}", f"b{k + 1}"], ["c2" if k == 1 else "y"],
                                      f"conv{k + 1}", kernel_shape=[1, 1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 12, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 12, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _sessions() -> tuple[npuflow.Session, npuflow.Session]:
    rng = np.random.default_rng(72)
    samples = [{"x": rng.normal(0, 1, (2, 8, 12, 10)).astype(np.float32)} for _ in range(4)]
    compiled = npuflow.compile(npuflow.quantize(_silu_model(), samples, target=TARGET).model, TARGET)
    return npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)


def test_fixed_point_convolutions_and_tables_between_convinteger_are_exact_with_fewer_passes(monkeypatch):
    # the ConvInteger forms, which serve the channels without an exact float32 multiplier
    # (fused_fixed.kernel_form, switched off here: test_qlinearconv_form_... below has it on)
    assert ort_kernels.convinteger_exact()
    monkeypatch.setattr(fused_fixed, "kernel_form", lambda *args, **kwargs: None)
    # the nearest 31-bit multipliers: with those the model has channels without a float32 form, which
    # take the float64 form asserted below (the compiler's own multipliers all have one here)
    monkeypatch.setattr(nm, "FLOAT32_FORM_TOLERANCE", 0.0)
    fast, ref = _sessions()
    rng = np.random.default_rng(73)
    for scale in (0.5, 3.0, 40.0):  # everyday codes, wide ones, saturated ones
        x = {"x": rng.normal(0, scale, (2, 8, 12, 10)).astype(np.float32)}
        a, b = fast.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    (run,) = [it for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items
              if isinstance(it, fused.FusedRun)]
    g = run.graph()
    nodes = fused_graph.live(g.nodes, g.inits, [g.bytes[t] if t in g.bytes else g.names[t] for t in run.outputs])[0]
    writer = {o: n for n in nodes for o in n.output}
    ops = [n.op_type for n in nodes]
    assert ops.count("ConvInteger") == 3 and ops.count("GatherElements") == 2, ops
    # the table's index is the requantised codes cast to int32, without a Sub first: the one Sub
    # writes the dequantized output (``+0.0 - x * (-scale)``, fused_graph.dequantized)
    assert [n.output[0] for n in nodes if n.op_type == "Sub"] == [g.names[t] for t in run.outputs], ops
    # no cast of a cast: the accumulator goes to float64 at once, the table writes uint8 entries
    chains = [(writer[n.input[0]].op_type, n.op_type) for n in nodes
              if n.op_type == "Cast" and n.input[0] in writer and writer[n.input[0]].op_type == "Cast"]
    assert not chains, chains
    assert any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.DOUBLE for n in nodes), ops  # the float64 form
    for ci in [n for n in nodes if n.op_type == "ConvInteger"][1:]:  # the two after a SiLU table read its bytes
        n = writer[ci.input[0]]
        while n.op_type == "Reshape":
            n = writer[n.input[0]]
        assert n.op_type == "GatherElements", n.op_type


def test_qlinearconv_form_of_the_same_convolutions_is_exact():
    # by default the channels with an exact float32 multiplier run on QLinearConv (every
    # convolution here: whole or split by channels), the codes still the kernels'
    fast, ref = _sessions()
    rng = np.random.default_rng(73)
    for scale in (0.5, 3.0, 40.0):
        x = {"x": rng.normal(0, scale, (2, 8, 12, 10)).astype(np.float32)}
        a, b = fast.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    ops = [n.op_type for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items
           if isinstance(it, fused.FusedRun) for n in it.graph().nodes]
    assert ops.count("QLinearConv") == 3, ops
