"""The one graph view (``npuflow/graph.py``, issue 17 item 3): producers and consumers with what
If/Loop bodies read from the outer scope, data flow through Q/DQ steps, decoded attributes and
model slicing, and no second index or attribute reader left in a stage.

Before it, the accuracy algorithms' producer/consumer dicts missed a branch's reads (a weight
also read by an If body counted one reader, so a weight edit changed the branch too), one
attribute reader handed back ``b"NOTSET"`` where the others said ``"NOTSET"``, and the build's
output cut (``onnx.utils.Extractor``) dropped the initializers a branch reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from npuflow.graph import GraphView, attr, attr_values, slice_model, slice_nodes
from tests.control_flow_nets import if_net, loop_body_with_nested_if


def _run(model: onnx.ModelProto, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(outputs, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


def _feeds(mode: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32),
            "mode": np.array(mode, np.int64)}


# --- the view -----------------------------------------------------------------------------------


def test_producers_and_consumers_count_what_a_branch_reads():
    model = if_net()
    view = GraphView(model)
    pos = {n.name: k for k, n in enumerate(view.nodes)}
    assert view.producer["r"] == pos["relu1"] and view.producer_node("b").name == "branch"
    assert view.consumers["r"] == [pos["branch"]]  # read by the branches, not listed as an input
    assert [n.name for n in view.consumer_nodes("two")] == ["branch"]
    assert view.only_consumer("r").name == "branch" and view.only_consumer("y") is None  # y is an output
    assert view.position(model.graph.node[3]) == pos["branch"] == view.position_of("branch")
    assert view.graph_inputs == ["x", "mode"] and view.graph_outputs == ["y"] and view.is_graph_output("y")
    # data inputs: the feature map the branches read and the condition, not the constant ``two``
    assert view.data_inputs(pos["branch"]) == ["cond", "r"]
    assert view.data_inputs(pos["conv2"]) == ["b"]
    assert view.const("two") == 2.0 and view.scalar("two") == 2.0 and view.const("r") is None
    assert view.shape("x") == [1, 3, 8, 8] and view.shape("w1") == [4, 3, 3, 3]
    assert view.elem_type("mode") == TensorProto.INT64


def test_loop_body_reads_through_a_nested_if_are_reads_of_the_loop():
    body = loop_body_with_nested_if("x0")
    nodes = [helper.make_node("Relu", ["x"], ["x0"], name="relu"),
             helper.make_node("Loop", ["n", "c", "x0"], ["y"], body=body, name="loop")]
    model = helper.make_model(helper.make_graph(
        nodes, "loop_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones(2, np.float32), "bias")]), opset_imports=[helper.make_opsetid("", 17)])
    view = GraphView(model)
    assert [n.name for n in view.consumer_nodes("bias")] == ["loop"]  # two scopes down
    assert view.consumers["x0"] == [1]  # once, though read as an input and by the body
    assert view.data_inputs(1) == ["n", "c", "x0"]  # ``bias`` is a constant


def test_data_flow_looks_through_quantize_steps():
    """A QDQ model reads as the float model it came from: the DQ'd weight is a constant with
    the stored integers as value, the conv's data producer is the relu behind the Q/DQ pair."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="wdq"),
        helper.make_node("Conv", ["rd", "wd"], ["y"], name="conv"),
    ]
    wq = np.arange(8, dtype=np.int8).reshape(2, 4, 1, 1)
    model = helper.make_model(helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.array(0.5, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int8), "z")]), opset_imports=[helper.make_opsetid("", 17)])
    view = GraphView(model)
    assert view.qdq == [False, True, True, True, False]
    assert view.data_source("rd") == "r" and view.data_producer("rd") == 0
    assert view.data_consumers("r") == [4] and view.consumers["r"] == [1]
    assert view.is_const("wd") and not view.is_const("rd")
    np.testing.assert_array_equal(view.value("wd"), wq)
    assert view.data_inputs(4) == ["rd"]
    assert view.reaches_output("r") is False and view.reaches_output("y")


def test_attributes_are_decoded_once():
    """Strings come back as ``str`` (one reading of ``auto_pad`` for every stage), string lists
    as lists of ``str``, numbers and lists as they are, a missing attribute as the default."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", pads=[1, 1, 1, 1], group=2,
                            names=["a", "b"])
    assert attr(node, "auto_pad") == "SAME_UPPER" and isinstance(attr(node, "auto_pad"), str)
    assert attr(node, "names") == ["a", "b"] and attr(node, "pads") == [1, 1, 1, 1] and attr(node, "group") == 2
    assert attr(node, "dilations", [1, 1]) == [1, 1] and attr(node, "strides") is None
    assert attr_values(node) == {"auto_pad": "SAME_UPPER", "pads": [1, 1, 1, 1], "group": 2, "names": ["a", "b"]}


# --- slicing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0, 1])
def test_slice_keeps_what_a_branch_reads_and_runs_as_the_model(mode):
    model = if_net()
    part = slice_model(model, ["b"])
    assert [n.name for n in part.graph.node] == ["conv1", "relu1", "eq", "branch"]
    assert {t.name for t in part.graph.initializer} == {"w1", "two", "one"}  # ``two``: read in a branch
    assert [i.name for i in part.graph.input] == ["x", "mode"] and [o.name for o in part.graph.output] == ["b"]
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full.graph.output.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, None))
    np.testing.assert_array_equal(_run(part, _feeds(mode), ["b"])[0], _run(full, _feeds(mode), ["b"])[0])


def test_slice_from_fed_tensors():
    """Tensors the caller feeds become inputs and the walk stops there; a tensor the model
    does not have is a coded error naming it."""
    model = if_net()
    part = slice_model(model, ["y"], inputs=["r"])
    assert [n.name for n in part.graph.node] == ["eq", "branch", "conv2"]
    assert [i.name for i in part.graph.input] == ["mode", "r"]
    r = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    full = slice_model(model, ["y"])
    want = _run(full, {**_feeds(1)}, ["y"])[0]
    relu = _run(slice_model(model, ["r"]), _feeds(1), ["r"])[0]
    np.testing.assert_array_equal(_run(part, {"mode": np.array(1, np.int64), "r": relu}, ["y"])[0], want)
    assert _run(part, {"mode": np.array(1, np.int64), "r": r}, ["y"])[0].shape == (1, 4, 8, 8)
    with pytest.raises(NpuflowError) as e:
        slice_model(model, ["no_such_tensor"])
    assert e.value.code == "NPF_MODEL_UNKNOWN_TENSOR" and "no_such_tensor" in e.value.message


@pytest.mark.parametrize("mode", [0, 1])
def test_node_set_slice_is_a_partition_part(mode):
    """A partition's part (the compiler's CPU subgraphs, perf's timed CPU parts): inputs are
    what the nodes read and do not make (a branch's outer reads included), outputs what the rest
    of the model reads, initializers what they or their bodies read, the IR version one ONNX
    Runtime opens; it computes what the model does."""
    model = if_net()
    model.ir_version = npuflow.model.MAX_IR_VERSION + 1  # a newer exporter's stamp
    view = GraphView(model)
    part = slice_nodes(model, [view.nodes[2], view.nodes[3]])
    assert [i.name for i in part.graph.input] == ["mode", "r"] and [o.name for o in part.graph.output] == ["b"]
    assert [t.name for t in part.graph.initializer] == ["two", "one"]  # ``two``: read in a branch only
    assert part.ir_version == npuflow.model.MAX_IR_VERSION
    assert slice_nodes(view, [view.nodes[2], view.nodes[3]]).SerializeToString() == part.SerializeToString()
    relu = _run(slice_model(model, ["r"]), _feeds(mode), ["r"])[0]
    want = _run(slice_model(model, ["b"]), _feeds(mode), ["b"])[0]
    np.testing.assert_array_equal(_run(part, {"mode": np.array(mode, np.int64), "r": relu}, ["b"])[0], want)
    assert [o.name for o in slice_nodes(model, [view.nodes[2]]).graph.output] == ["cond"]  # the If reads it
    # a partitioner's own boundaries are kept as given
    given = slice_nodes(model, view.nodes[:2], inputs=["x"], outputs=["c", "r"], name="cpu")
    assert [o.name for o in given.graph.output] == ["c", "r"] and given.graph.name == "cpu"


def test_slice_of_a_real_control_flow_model(models):
    """silero-vad's default file: every computation sits in the branches of an If over the
    sample rate, which read the audio and the LSTM state from the outer scope (the If lists only
    its condition); cut at the If's outputs, the slice keeps them as inputs and computes what the
    whole model does."""
    model = npuflow.model.load(str(models.silero_vad()), input_shapes={"input": [1, 576], "state": [2, 1, 128]})
    view = GraphView(model)
    branch = next(k for k, n in enumerate(view.nodes) if n.op_type == "If")
    assert {"input", "state"} <= set(view.reads(branch)) - set(view.nodes[branch].input)
    assert view.consumers["state"] == [branch]
    cut = list(view.nodes[branch].output)
    part = slice_model(model, cut)
    assert [n.op_type for n in part.graph.node] == ["Equal", "If"]
    assert [i.name for i in part.graph.input] == ["input", "state", "sr"]
    rng = np.random.default_rng(0)
    feeds = {"input": rng.uniform(-0.5, 0.5, (1, 576)).astype(np.float32), "sr": np.array(16000, np.int64),
             "state": np.zeros((2, 1, 128), np.float32)}
    got = _run(part, feeds, cut)
    want = _run(model, feeds, ["output", "stateN"])  # the Identity copies of the cut tensors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# --- one set of lowering facts for check and compile ----------------------------------------------


def test_check_and_compile_ask_one_facts_object():
    """``lowering_limit`` and the chain walks get the same object type from the checker and the
    compiler, with the compiler's answers where the two adapters differed: a float weight behind
    ``Q -> DQ`` is the integers ``compile``'s legalisation folds it into
    (:func:`npuflow.check.quant_facts.folded_weight`; the view looks through any chain to the float
    weight), and an ``ai.npuflow`` function is a quantize step only when its name parses
    (:func:`npuflow.graph.is_qdq`, what data flow looks through, counts any)."""
    from npuflow.check.quant_facts import QuantFacts
    from npuflow.compiler.qgraph import QGraph
    from npuflow.graph import quantize_mode

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("QuantizeLinear", ["wf", "s", "zp"], ["wq"], name="q_w"),
        helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w_runtime"], name="dq_w"),
        helper.make_node("DequantizeLinear", ["wi", "s", "zp"], ["w_stored"], name="dq_wi"),
        helper.make_node("Quantize_half_up_int8", ["x", "s", "zp"], ["xq"], domain="ai.npuflow", name="q_x"),
        helper.make_node("Quantize_nearest_int8", ["x", "s", "zp"], ["xb"], domain="ai.npuflow", name="q_bad"),
    ]
    inits = [numpy_helper.from_array(np.ones((2, 2), np.float32), "wf"),
             numpy_helper.from_array(np.full((2, 2), 3, np.int8), "wi"),
             numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "zp")]
    g = helper.make_graph(nodes, "facts", [helper.make_tensor_value_info("x", f, [2, 2])],
                          [helper.make_tensor_value_info(o, TensorProto.INT8, [2, 2]) for o in ("xq", "xb")]
                          + [helper.make_tensor_value_info(o, f, [2, 2]) for o in ("w_runtime", "w_stored")], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.npuflow", 1)])
    view, compiled = GraphView(model), QGraph(model, None)
    checker = QuantFacts(view)
    assert type(compiled.facts) is QuantFacts and checker.quantized and compiled.facts.quantized
    assert view.value("w_runtime").dtype == np.float32  # the float weight
    np.testing.assert_array_equal(checker.value("w_runtime"), np.full((2, 2), 2, np.int8))  # 1 / 0.5, folded
    np.testing.assert_array_equal(checker.value("w_stored"), np.full((2, 2), 3, np.int8))
    by_name = {n.name: n for n in view.nodes}
    assert [checker.is_quantize(by_name[k]) for k in ("q_w", "q_x", "q_bad")] == [True, True, False]
    assert npuflow.graph.is_qdq(by_name["q_bad"]) and quantize_mode(by_name["q_bad"]) is None
    assert [checker.is_dequantize(by_name[k]) for k in ("dq_w", "dq_wi", "q_x")] == [True, True, False]


# --- no second index, no second attribute reader ------------------------------------------------

ROOT = Path(npuflow.__file__).parent


def _node_ref(value: ast.expr) -> bool:
    """A node, its position or its name: what a producer/consumer map stores."""
    return isinstance(value, ast.Name) or (isinstance(value, ast.Attribute) and value.attr == "name"
                                           and isinstance(value.value, ast.Name))


def _iterates(loop: ast.For | ast.comprehension, field: str) -> bool:
    """``for t in <x>.<field>`` (``output``/``input``) or ``for t in node_reads(<x>)``."""
    it = loop.iter
    if field == "input" and isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "node_reads":
        return True
    return isinstance(it, ast.Attribute) and it.attr == field and isinstance(loop.target, ast.Name)


def _graph_indexes(source: str, where: str) -> list[str]:
    """Hand-built graph indexes and attribute readers in one module:

    * a call of ``helper.get_attribute_value`` (the registry's :func:`npuflow.operators.node_attr`,
      which is :func:`npuflow.graph.attr`, is the one decoder);
    * a producer map: ``{o: node for ... for o in node.output}``, or ``m[o] = node`` in a loop
      over a node's outputs (node, node position or node name as value);
    * a consumer map: ``m.setdefault(t, []).append(node)`` or ``m[t].append(node)`` in a loop
      over a node's inputs;
    * a class keeping ``self.producer``/``self.consumers`` of its own."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr == "get_attribute_value":
            found.append(f"{where}:{line} attribute reader")
        elif isinstance(node, ast.DictComp) and isinstance(node.key, ast.Name) and _node_ref(node.value):
            if any(_iterates(g, "output") and g.target.id == node.key.id for g in node.generators):
                found.append(f"{where}:{line} producer map")
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            var = node.target.id
            for sub in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                if _iterates(node, "output") and isinstance(sub, ast.Assign) and _node_ref(sub.value) and any(
                        isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Name) and t.slice.id == var
                        for t in sub.targets):
                    found.append(f"{where}:{sub.lineno} producer map")
                if _iterates(node, "input") and isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) \
                        and sub.func.attr == "append" and sub.args and _node_ref(sub.args[0]):
                    key = sub.func.value
                    keyed = (isinstance(key, ast.Call) and isinstance(key.func, ast.Attribute)
                             and key.func.attr == "setdefault"
                             and key.args and isinstance(key.args[0], ast.Name) and key.args[0].id == var) or (
                        isinstance(key, ast.Subscript) and isinstance(key.slice, ast.Name) and key.slice.id == var)
                    if keyed:
                        found.append(f"{where}:{sub.lineno} consumer map")
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr in ("producer", "consumers") and isinstance(t.value, ast.Name)
                and t.value.id == "self" for t in node.targets):
            found.append(f"{where}:{line} index class")
    return found


def test_the_detector_finds_the_old_indexes():
    """The shapes the stages used to write, each found (so the test below means something)."""
    old = ('from onnx import helper\n'
           'def attr(node, name):\n    return helper.get_attribute_value(node.attribute[0])\n'
           'def producers(model):\n    return {o: n for n in model.graph.node for o in n.output}\n'
           'def by_position(nodes):\n    producer = {}\n    for i, n in enumerate(nodes):\n'
           '        for o in n.output:\n            producer[o] = i\n    return producer\n'
           'def consumers(model):\n    out = {}\n    for n in model.graph.node:\n        for i in n.input:\n'
           '            out.setdefault(i, []).append(n)\n    return out\n'
           'class Index:\n    def __init__(self):\n        self.producer = {}\n')
    kinds = [f.split(" ", 1)[1] for f in _graph_indexes(old, "old.py")]
    assert sorted(kinds) == ["attribute reader", "consumer map", "index class", "producer map", "producer map"]


def test_no_other_module_builds_a_graph_index_or_an_attribute_reader():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel != "graph.py":
            found += [f for f in _graph_indexes(path.read_text(), rel)
                      if not (rel == "operators.py" and f.endswith("attribute reader"))]  # the one decoder
    assert not found, f"graph indexes or attribute readers outside npuflow/graph.py: {found}"
