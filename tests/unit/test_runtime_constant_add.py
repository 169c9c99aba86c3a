"""A float-scale add of a one-value constant after a hard-swish is ONNX Runtime's QLinearAdd.

PP-OCRv4 rec's learnable bias after each hard-swish, on bernoulli2: the add was composed with the
hard-swish into one byte table (a ``GatherElements`` copy loop between layout transposes); it is
now the float hard-swish and ``com.microsoft.QLinearAdd`` with the constant's one byte, as ONNX
Runtime's own plain QDQ run, where that kernel gives every code the op's own kernel's result
(checked at load in its vector loop and scalar tails).  Equal to the op-by-op kernels bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow import numerics as nm
from npuflow import ort_kernels
from npuflow.runtime import fused, fused_graph, fused_pairs
from tests.unit.quant_nets import samples

SHAPE = [1, 3, 8, 8]


def _conv_hswish_bias_conv(bias: float) -> onnx.ModelProto:
    """Conv 3x3 -> HardSwish -> Add(one constant) -> depthwise Conv 3x3 (padded: the constant does
    not fold into its bias, as in PP-OCRv4 rec's blocks)."""
    rng = np.random.default_rng(32)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([bias], np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("Add", ["h", "b"], ["a"], name="bias"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2", group=8, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fused_ops(bias: float) -> list[str]:
    """The op types of the one accelerator subgraph's fused run; its outputs equal the kernels'."""
    q = npuflow.quantize(_conv_hswish_bias_conv(bias), samples(SHAPE, n=4, seed=3), target="bernoulli2")
    compiled = npuflow.compile(q.model, "bernoulli2")
    assert [s.on_accelerator for s in compiled.subgraphs] == [True]
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    for x in samples(SHAPE, n=3, seed=5):
        a, b = fast.run({"x": x}), ref.run({"x": x})
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    (executor,) = [e for e in fast._executors if hasattr(e, "plan")]
    (run,) = [it for it in executor.plan.items if isinstance(it, fused.FusedRun)]
    g = run.graph()
    live = fused_graph.live(g.nodes, g.inits, [g.names.get(t, t) for t in run.outputs])[0]
    return [n.op_type for n in live]


@pytest.mark.parametrize("bias", [0.3, -0.7])
def test_a_constant_add_after_a_float_hard_swish_is_qlinear_add(bias):
    ops = _fused_ops(bias)
    if ort_kernels.exact():
        assert "QLinearAdd" in ops and "GatherElements" not in ops, ops
    else:  # a CPU whose integer kernels are not exact keeps the table (fused_pairs.constant_operand)
        assert "QLinearAdd" not in ops, ops


def test_a_kernel_that_rounds_one_code_otherwise_is_refused():
    """The load's check compares every code: one entry off and the add stays a table.  Not a missing
    fixture: on a CPU whose integer kernels are not exact ORT's kernel itself differs, and the check is
    never asked there (``constant_operand``)."""
    if not ort_kernels.exact():
        pytest.skip("this CPU's integer kernels are not exact")
    args = (0.05, 0.01, 0.06, 128, 0, 128, 30)
    codes = np.arange(256)
    table = np.clip(nm.qlinear_add(codes, 0.05, 128, np.full(256, 30), 0.01, 0, 0.06, 128), 0, 255).astype(np.int64)
    assert fused_pairs._constant_matches.__wrapped__(*args, table.tobytes())
    table[200] += 1
    assert not fused_pairs._constant_matches.__wrapped__(*args, table.tobytes())
