"""A rewritten tanh-GELU keeps its source node names, so check and compile name the same nodes.

New-user round 28b, a T5-style encoder on DPUCZDX8G_ISA1_B4096: torch writes the tanh GELU as 9
nodes (``x*x``, ``*x``, ``*0.044715``, ``+x``, ``*sqrt(2/pi)``, ``Tanh``, ``+1``, ``*x``, ``*0.5``);
``canonical_gelus`` rewrites it as the 8-node canonical chain.  ``check`` (on the user's model)
listed 8 fused nodes per GELU under the source names, ``compile`` 7 under made-up names
(``/Mul_6/gelu_0_mul``..``gelu_6_mul``) that no one could match.  The rewrite now reuses the
source names of the nodes it replaces, aligned from the end (each new node takes the name of the
source node of its op type at the same distance from the GELU's last node): only one source node
per GELU (the first ``x*x``) has no counterpart, and every name compile reports is in the
user's model, on the side check gave it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.gelu import canonical_gelus

TARGET = "DPUCZDX8G_ISA1_B4096"


def _t5_like() -> onnx.ModelProto:
    """``y = gelu_tanh(x W1) W2``, the GELU as torch exports ``gelu_new`` (``x * x * x``)."""
    rng = np.random.default_rng(0)
    consts = {"W1": rng.normal(size=(16, 32)) * 0.3, "W2": rng.normal(size=(32, 16)) * 0.3,
              "c": np.array(0.044715), "k": np.array(np.sqrt(2.0 / np.pi)), "one": np.array(1.0),
              "half": np.array(0.5)}
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="/wi/MatMul"),
        helper.make_node("Mul", ["h", "h"], ["m1"], name="/Mul_1"),
        helper.make_node("Mul", ["h", "m1"], ["m2"], name="/Mul_2"),
        helper.make_node("Mul", ["c", "m2"], ["m3"], name="/Mul_3"),
        helper.make_node("Add", ["h", "m3"], ["a2"], name="/Add_2"),
        helper.make_node("Mul", ["k", "a2"], ["m4"], name="/Mul_4"),
        helper.make_node("Tanh", ["m4"], ["t"], name="/Tanh"),
        helper.make_node("Add", ["one", "t"], ["a3"], name="/Add_3"),
        helper.make_node("Mul", ["h", "a3"], ["m5"], name="/Mul_5"),
        helper.make_node("Mul", ["half", "m5"], ["g"], name="/Mul_6"),
        helper.make_node("MatMul", ["g", "W2"], ["y"], name="/wo/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "t5_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_canonical_tanh_gelu_keeps_the_source_names():
    source = _t5_like()
    rewritten = canonical_gelus(source)
    names = [n.name for n in rewritten.graph.node]
    assert names == ["/wi/MatMul", "/Mul_2", "/Mul_3", "/Add_2", "/Mul_4", "/Tanh", "/Add_3", "/Mul_5", "/Mul_6",
                     "/wo/MatMul"]
    types = {n.name: n.op_type for n in source.graph.node}
    assert all(types[n.name] == n.op_type for n in rewritten.graph.node)
    x = np.random.default_rng(2).normal(size=(1, 8, 16)).astype(np.float32)
    from onnx.reference import ReferenceEvaluator
    want = ReferenceEvaluator(source).run(None, {"x": x})[0]
    got = ReferenceEvaluator(rewritten).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compile_names_the_gelu_nodes_check_names_on_the_same_side():
    model = _t5_like()
    check_sides = {n.name: n.device for n in npuflow.check(model, TARGET).nodes}
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(1, 8, 16)).astype(np.float32)} for _ in range(8)]
    q = npuflow.quantize(model, calib, TARGET, warn=False)
    compiled = npuflow.compile(q.model, TARGET)
    compiled_nodes = set()
    for sg in compiled.subgraphs:
        compiled_nodes.update(n for op in sg.ops for n in [op["name"], *op.get("nodes", [])]
                              if sg.on_accelerator)
        compiled_nodes.update(sg.nodes if not sg.on_accelerator else ())
    gelu_named = {n for n in compiled_nodes if n.startswith(("/Mul", "/Add", "/Tanh"))}
    assert gelu_named == set(check_sides) - {"/wi/MatMul", "/wo/MatMul", "/Mul_1"}, gelu_named
