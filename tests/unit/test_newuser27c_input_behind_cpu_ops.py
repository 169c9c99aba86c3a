"""An input that passes float CPU ops before its first quantize step (newuser_flows27b, "What it does not see"):
DLinear on bernoulli2 replicates its series' ends with Slice / Expand / Tile and a Concat on the CPU, so the
manifest recorded no quantize step for the input and ``NPF_RUNTIME_INPUT_SATURATED`` never counted it.  Now
``compile`` follows ops that keep the input's values (``operators.VALUE_KEEPING_OPS``) to the quantize steps
they reach and records them as the input's ``clipped_by`` (format 1.3 / 2.1); the run-time count reads them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.compiler import manifest_schema
from npuflow.runtime.coverage import InputSaturationWarning


def _replicate_pad_model(rng: np.random.Generator):
    """x (1x16x4) -> its first row tiled 3x (Slice, Tile) concatenated before it -> Transpose -> MatMul -> Relu:
    DLinear's replicate padding in front of its first quantized layer."""
    w = numpy_helper.from_array(rng.normal(0, 0.3, (19, 8)).astype(np.float32), "w")
    const = [numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("s0", [0]), ("s1", [1]), ("ax", [1]), ("reps", [1, 3, 1]))]
    nodes = [helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["first"], name="first_row"),
             helper.make_node("Tile", ["first", "reps"], ["pad"], name="replicate"),
             helper.make_node("Concat", ["pad", "x"], ["cat"], name="cat", axis=1),
             helper.make_node("Transpose", ["cat"], ["t"], name="t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w"], ["m"], name="fc"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], [w, *const])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> str:
    """The model on bernoulli2, where the Slice / Tile / Concat / Transpose run in float on the CPU."""
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, (1, 16, 4)).astype(np.float32)} for _ in range(16)]
    q = npuflow.quantize(_replicate_pad_model(rng), samples, target="bernoulli2", warn=False)
    path = tmp_path_factory.mktemp("cov27c") / "m.npuf"
    npuflow.compile(q, "bernoulli2").save(path)
    return str(path)


def test_the_manifest_records_the_step_the_input_reaches_through_cpu_ops(compiled):
    manifest = npuflow.CompiledModel.load(compiled).manifest
    (x,) = manifest["inputs"]
    assert "quant" not in x  # the input itself is not quantized: it enters a CPU subgraph
    (step,) = x["clipped_by"]
    assert step["node"] == "t_q" and step["quant"]["dtype"] == "int8"
    assert manifest_schema.format_version(manifest) == (1, manifest_schema.CLIPPED_BY_MINOR[1])


def test_inputs_clipped_behind_cpu_ops_are_counted_and_warned(compiled):
    sess = npuflow.Session(compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputSaturationWarning)
        sess.run({"x": np.full((1, 16, 4), 0.5, np.float32)})
    x = np.zeros((1, 16, 4), np.float32)
    x[0, 5, :] = [3.0, -3.0, 2.5, -2.5]  # 4 of 64 values far outside the calibrated -1..1
    with pytest.warns(InputSaturationWarning, match=r"NPF_RUNTIME_INPUT_SATURATED.*'x': 3\.12 % of its values \(4 of 128"):
        sess.run({"x": x})
    (cov,) = sess.input_coverage()
    assert (cov.outside, cov.total, cov.runs) == (4, 128, 2)
    assert -1.1 < cov.low < -0.9 and 0.9 < cov.high < 1.1


def test_an_op_that_computes_ends_the_walk():
    """``x - 1`` before the step: the step's range is not the input's, nothing is recorded."""
    from npuflow.compiler.input_steps import clipping_steps
    from npuflow.compiler.qgraph import QGraph

    nodes = [helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["a"], name="sl"),
             helper.make_node("Sub", ["a", "one"], ["b"], name="sub"),
             helper.make_node("QuantizeLinear", ["b", "sc", "zp"], ["bq"], name="b_q"),
             helper.make_node("QuantizeLinear", ["a", "sc", "zp"], ["aq"], name="a_q")]
    const = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("s0", [0]), ("s1", [1]), ("ax", [1]))]
    const += [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.array(0.01, np.float32), "sc"), numpy_helper.from_array(np.array(0, np.int8), "zp")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("bq", TensorProto.INT8, [1, 1]),
                               helper.make_tensor_value_info("aq", TensorProto.INT8, [1, 1])], const)
    g = QGraph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None)
    assert [s["node"] for s in clipping_steps(g, "x")] == ["a_q"]
