"""``compile`` asks the graph questions as ``check`` does: its lowering index knows the target
(``QGraph(model, target)``, required) and it names nodes with check's function
(``check.place.name_nodes``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU
from tests.unit.test_foreign_weight_check import _model
from tests.unit.test_placement_agreement import compiled_devices


def _reshape_transpose_gemm() -> onnx.ModelProto:
    """NNCF-style (no quantize step after the reshapes) ``Conv -> Reshape -> Transpose -> Reshape ->
    Gemm``, MobileViT's pattern; bernoulli2 has no Transpose."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(x: str, scale: float, name: str) -> str:
        const(f"{name}_s", np.float32(scale)), const(f"{name}_z", np.int8(0))
        nodes.append(helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_Q"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                                      name=f"{name}_DQ"))
        return f"{name}_dq"

    def weight(name: str, shape: tuple[int, ...]) -> str:
        const(f"{name}_i", rng.integers(-100, 100, shape).astype(np.int8))
        const(f"{name}_s", np.float32(0.0039)), const(f"{name}_z", np.int8(0))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_i", f"{name}_s", f"{name}_z"], [f"{name}_dq"],
                                      name=f"{name}_DQ"))
        return f"{name}_dq"

    x = qdq("x", 0.03, "xin")
    nodes.append(helper.make_node("Conv", [x, weight("w1", (8, 4, 3, 3))], ["c1"], name="conv", pads=[1, 1, 1, 1]))
    y = qdq("c1", 0.05, "c1o")
    const("shp1", np.array([1, 8, 64], np.int64)), const("shp2", np.array([1, 512], np.int64))
    nodes += [helper.make_node("Reshape", [y, "shp1"], ["r1"], name="reshape1"),
              helper.make_node("Transpose", ["r1"], ["t"], name="transpose", perm=[0, 2, 1]),
              helper.make_node("Reshape", ["t", "shp2"], ["r2"], name="reshape2"),
              helper.make_node("Gemm", ["r2", weight("w2", (10, 512))], ["g"], name="gemm", transB=1)]
    qdq("g", 0.1, "go")
    nodes[-1].output[0] = "out"
    graph = helper.make_graph(nodes, "rtg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_compile_refuses_the_ops_around_a_cpu_transpose_for_checks_reason():
    """bernoulli2: the reshape after the Transpose and the Gemm get no quantize step (the target has
    no Transpose), so check says "input ... is not quantized"; compile's lowering index had no target,
    accepted them (a grid step through the Transpose) and refused them later in the lowering ("is not
    a dequantized integer tensor"), the placement agreeing only because the checker's verdict came
    after.  Now compile's note is check's reason, and the sides agree."""
    model = _reshape_transpose_gemm()
    report = npuflow.check(model, "bernoulli2")
    reasons = {n.name: n.reasons for n in report.nodes}
    compiled = npuflow.compile(model, "bernoulli2")
    sides = compiled_devices(compiled)
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
    assert {k: (v, sides[k]) for k, v in checked.items() if k in sides and sides[k] != v} == {}
    assert checked["conv"] == "ACC" and checked["gemm"] == checked["reshape2"] == "CPU"
    for node in ("reshape2", "gemm"):
        note = next(n for n in compiled.notes if n.startswith(f"{node} ("))
        assert note.endswith(reasons[node][0]), (note, reasons[node])


def test_a_generated_name_that_collides_is_named_as_check_names_it(tmp_path):
    """``model.load`` renames duplicate names the file has; an empty name gets ``<op>_<index>``, which
    a later node may already use ([Conv "", Relu "Conv_4"]): check names that Relu ``Conv_4_5``,
    compile named it ``Relu_5`` (its own rule), so the two reports named one node differently; compile
    now names nodes with check's function.  Reached through every entry (a file as the CLI and the
    build pipeline pass it, a ModelProto: all go through ``compile_model -> load``)."""
    model = _model("Conv")
    layer = next(n for n in model.graph.node if n.name == "layer")
    relu = next(n for n in model.graph.node if n.name == "relu")
    layer.name, relu.name = "", "Conv_4"
    assert list(model.graph.node).index(layer) == 4
    report = npuflow.check(model, "cpu-int8")
    names = [n.name for n in report.nodes]
    assert "Conv_4" in names and "Conv_4_5" in names and len(set(names)) == len(names)
    onnx.save(model, tmp_path / "names.onnx")
    for source in (model, str(tmp_path / "names.onnx")):
        sides = compiled_devices(npuflow.compile(source, "cpu-int8"))
        assert {"Conv_4", "Conv_4_5"} <= sides.keys() and sides.keys() <= set(names), sorted(sides)


def test_an_identity_after_the_output_dequantize_step_is_on_the_cpu_on_both_sides():
    """``... -> Q -> DQ -> Identity -> output`` (tf2onnx's output Identity): compile lowers an Identity
    only between a dequantize and a quantize step, so it and the DQ run in ONNX on the CPU; check let
    both follow the Relu onto the accelerator (2 nodes differed on every target)."""
    model = _model("Conv")
    dq = next(n for n in model.graph.node if n.name == "out_DQ")
    dq.output[0] = "out_float"
    model.graph.node.append(helper.make_node("Identity", ["out_float"], ["out"], name="id"))
    for target in ("cpu-int8", "bernoulli2"):
        report = npuflow.check(model, target)
        checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
        sides = compiled_devices(npuflow.compile(model, target))
        assert {k: (v, sides[k]) for k, v in checked.items() if k in sides and sides[k] != v} == {}
        assert checked["id"] == checked["out_DQ"] == "CPU" and checked["layer"] == "ACC"
        assert report.node("id").reasons == ["output 'out' is not quantized (it runs in float)"]
