"""One-element constants at their node's rank (``runtime/broadcast.py``): ONNX Runtime broadcasts a
lower-rank one-element operand one element at a time when the output's last axis is 1 (Magika's
``[1, C, L, 1]`` tensors: a quantize step's ``Div``/``GreaterOrEqual``/``Add`` 1.1 ms each where the
same op at full rank takes 30 µs).  The sessions the runtime opens for CPU subgraphs and fused runs
must read no such operand, and compute what they computed before, bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import qdq
from npuflow.operators import BROADCAST_ELEMENTWISE_OPS
from npuflow.runtime import executors, fused_run, joined
from npuflow.runtime.broadcast import full_rank_constants

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixture_models  # noqa: E402
from test_layernorm_variance import _bytes  # noqa: E402  (Magika's input: a file's bytes, then padding)

SHAPES = {"bytes": [1, 2048]}


def slow_broadcasts(model: onnx.ModelProto) -> list[str]:
    """Broadcasting nodes whose output ends in a 1-axis and that read a one-element operand of lower rank."""
    model = onnx.inliner.inline_local_functions(model) if len(model.functions) else model
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
              if vi.type.tensor_type.HasField("shape")}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    shapes.update({n.output[0]: list(n.attribute[0].t.dims) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    slow = []
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type not in BROADCAST_ELEMENTWISE_OPS or not out or len(out) < 2 or out[-1] != 1:
            continue
        if any(i in shapes and len(shapes[i]) < len(out) and all(d == 1 for d in shapes[i]) for i in node.input):
            slow.append(f"{node.op_type} {node.name}")
    return slow


def _quantize_on_trailing_one() -> onnx.ModelProto:
    """A CPU subgraph's shape (Magika's before its convolution): dequantize, add a bias, move the
    features to the channel axis of a 2-D layout ``[1, C, L, 1]``, quantize half up."""
    fn = qdq.make_quantize_function("half_up", "int8", 17)
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["xf"]),
             helper.make_node("Add", ["xf", "bias"], ["b"]),
             helper.make_node("Unsqueeze", ["b", "axis"], ["b4"]),
             helper.make_node("Transpose", ["b4"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node(fn.name, ["t", "s2", "zp"], ["y"], domain=qdq.DOMAIN)]
    inits = [numpy_helper.from_array(np.array(0.0625, np.float32), "s"),
             numpy_helper.from_array(np.array(0.125, np.float32), "s2"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(np.linspace(-1, 1, 256).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([3], np.int64), "axis")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 512, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 256, 512, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(qdq.DOMAIN, 1)],
                              functions=[fn])
    model.ir_version = 8
    return model


def test_rewrite_leaves_no_slow_broadcast_and_the_same_codes() -> None:
    model = _quantize_on_trailing_one()
    assert len(slow_broadcasts(model)) >= 3  # the quantize step's Div, GreaterOrEqual, Add of the zero point
    rewritten = full_rank_constants(model)
    assert slow_broadcasts(rewritten) == []
    x = {"x": np.random.default_rng(0).integers(-128, 128, (1, 512, 256)).astype(np.int8)}
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        runs = [ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, x)[0]
                for m in (model, rewritten)]
        np.testing.assert_array_equal(runs[1], runs[0])


def test_model_without_such_nodes_is_returned_as_it_is() -> None:
    model = _quantize_on_trailing_one()
    model.graph.node[3].attribute[0].ints[:] = [0, 3, 2, 1]  # [1, 1, 512, 256]: the last axis is not 1
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 256
    model.functions.pop()
    model.graph.node.pop()
    model.graph.output[0].name = "t"
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    assert full_rank_constants(model) is model


@pytest.fixture(scope="module")
def magika_npuf(tmp_path_factory) -> Path:
    q = npuflow.quantize(str(fixture_models.magika()), [_bytes(k) for k in range(4)], "DPUCZDX8G_ISA1_B4096",
                         input_shapes=SHAPES)
    path = tmp_path_factory.mktemp("magika") / "m.npuf"
    npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096", input_shapes=SHAPES).save(path)
    return path


def test_magika_sessions_read_full_rank_constants_and_stay_exact(magika_npuf, monkeypatch) -> None:
    """Every ONNX Runtime graph the runtime opens for Magika on the DPU (CPU subgraphs, fused and joined runs)
    reads its one-element operands at full rank; the outputs equal the op-by-op Session's."""
    opened: list[onnx.ModelProto] = []

    def capture(real):
        def open_session(model, **kw):
            opened.append(model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model))
            return real(model, **kw)
        return open_session

    monkeypatch.setattr(executors, "open_session", capture(executors.open_session))
    monkeypatch.setattr(fused_run, "open_session", capture(fused_run.open_session))
    monkeypatch.setattr(joined, "open_session", capture(joined.open_session))
    session = npuflow.Session(magika_npuf, threads=1)
    x = {"bytes": _bytes(300)}
    got = session.run(x)
    assert len(opened) >= 5
    assert [s for m in opened for s in slow_broadcasts(m)] == []
    monkeypatch.undo()
    reference = npuflow.Session(magika_npuf, fuse=False).run(x)
    for name, value in reference.items():
        np.testing.assert_array_equal(got[name], value)


def _one_hot_quantized(mode: str) -> onnx.ModelProto:
    """Magika's first CPU subgraph: bytes -> ``Equal`` with the 257 values -> ``Cast`` to float -> quantize."""
    fn = qdq.make_quantize_function(mode, "int8", 17)
    quantize = helper.make_node(fn.name, ["f", "s", "zp"], ["y"], domain=qdq.DOMAIN) if mode != "half_even" \
        else helper.make_node("QuantizeLinear", ["f", "s", "zp"], ["y"])
    nodes = [helper.make_node("Unsqueeze", ["x", "axis"], ["x3"]),
             helper.make_node("Equal", ["x3", "values"], ["b"]),
             helper.make_node("Cast", ["b"], ["f"], to=TensorProto.FLOAT), quantize]
    inits = [numpy_helper.from_array(np.array(1 / 128, np.float32), "s"),
             numpy_helper.from_array(np.array(5, np.int8), "zp"),
             numpy_helper.from_array(np.arange(257, dtype=np.int32), "values"),
             numpy_helper.from_array(np.array([2], np.int64), "axis")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 64, 257])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(qdq.DOMAIN, 1)],
                              functions=[fn] if mode != "half_even" else [])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mode", ["half_up", "half_even"])
def test_quantized_one_hot_is_a_select_between_its_two_codes(mode) -> None:
    """The quantize step of a ``Cast`` of booleans sees 0 and 1 only: a ``Where`` between their codes
    gives the same codes (1.0 at scale 1/128 saturates: 127, not 128 + 5)."""
    model = _one_hot_quantized(mode)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    executors._quantized_booleans_as_select(rewritten)
    # the float Cast nothing reads any more is gone: ONNX Runtime would run it (Magika: 4 % of a frame)
    assert [n.op_type for n in rewritten.graph.node] == ["Unsqueeze", "Equal", "Where"]
    got = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(1).integers(0, 257, (1, 64)).astype(np.int32)}
    want = expected.run(None, x)[0]
    assert set(np.unique(want)) == {5, 127}
    np.testing.assert_array_equal(got.run(None, x)[0], want)


def test_a_cpu_subgraph_session_selects_the_one_hot_codes_before_shortening_quantize_steps() -> None:
    """The session's model of a CPU subgraph keeps the select: the shorter half-up steps
    (``halfup_steps``) rewritten first left the quantize step no ``Cast`` to recognise."""
    model, _ = executors._session_model(_one_hot_quantized("half_up"))
    assert [n.op_type for n in model.graph.node] == ["Unsqueeze", "Equal", "Where"]


def test_the_one_hot_cast_stays_where_something_else_reads_it() -> None:
    model = _one_hot_quantized("half_up")
    model.graph.output.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 64, 257]))
    rewritten, _ = executors._session_model(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Unsqueeze", "Equal", "Cast", "Where"]
