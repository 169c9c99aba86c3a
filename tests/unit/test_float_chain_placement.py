"""An op npuflow's quantizer never quantizes on its own (``OpDef.quantized`` false) is placed by
``check`` where ``quantize`` + ``compile`` leave it: a ``Div`` by a constant or a ``Tanh`` on the
CPU unless quantized work is on both sides of it (ConvNeXt's erf GELU: a ``Div`` after a CPU bias
``Add``, or before a CPU ``Erf``)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU, NPU

TARGETS = ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"]


def _model(mid: str, after_cpu: bool, before_cpu: bool | None = None):
    """conv0 -> (an Erf, on the CPU on every target, if ``after_cpu``, else a Relu) -> mid -> (an Erf
    if ``before_cpu``, which defaults to ``after_cpu``) -> conv."""
    before_cpu = after_cpu if before_cpu is None else before_cpu
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(1.4142, np.float32), "c")]
    first = helper.make_node("Erf" if after_cpu else "Relu", ["a0"], ["a"], name="first")
    node = (helper.make_node("Div", ["a", "c"], ["d"], name="mid") if mid == "Div"
            else helper.make_node(mid, ["a"], ["d"], name="mid"))
    tail = [helper.make_node("Erf", ["d"], ["e"], name="erf")] if before_cpu else []
    nodes = [helper.make_node("Conv", ["x", "w"], ["a0"], name="conv0", pads=[1, 1, 1, 1]), first, node, *tail,
             helper.make_node("Conv", ["e" if before_cpu else "d", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _compiled_device(model, target: str) -> str:
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, calib, target, warn=False)
    compiled = npuflow.compile(q.model, target)
    on_cpu = {n for sg in compiled.subgraphs if not sg.on_accelerator for n in sg.nodes}
    return CPU if "mid" in on_cpu else NPU


@pytest.mark.parametrize("target", TARGETS)
def test_a_div_between_cpu_ops_is_on_the_cpu_in_check_as_in_compile(target):
    model = _model("Div", after_cpu=True)
    r = npuflow.check(model, target)
    assert r.node("mid").device == CPU
    assert "its input comes from the CPU" in r.node("mid").reasons[-1]
    assert "quantized work is on both sides" in r.node("mid").hint
    assert _compiled_device(model, target) == CPU


@pytest.mark.parametrize("target", TARGETS)
def test_a_div_after_quantized_work_stays_on_the_accelerator(target):
    model = _model("Div", after_cpu=False)
    assert npuflow.check(model, target).node("mid").device == NPU
    assert _compiled_device(model, target) == NPU


def test_a_tanh_after_a_cpu_op_is_quantized_on_its_own():
    """bernoulli2 runs tanh as a table; since session 33 (newops2) the quantizer quantizes a Tanh
    wherever the target places it, as a Sigmoid, so one after a CPU op gets its own quantize step
    and runs on the BPU (before: quantized only between quantized ops, so on the CPU there)."""
    for after_cpu in (True, False):
        model = _model("Tanh", after_cpu=after_cpu)
        assert npuflow.check(model, "bernoulli2").node("mid").device == NPU
        assert _compiled_device(model, "bernoulli2") == NPU


@pytest.mark.parametrize("target", TARGETS)
def test_a_div_between_quantized_work_and_a_cpu_op_is_on_the_cpu(target):
    """No quantize step follows it when a CPU op reads it, so compile runs it in float."""
    model = _model("Div", after_cpu=False, before_cpu=True)
    r = npuflow.check(model, target)
    assert r.node("mid").device == CPU and "no accelerator op reads its output" in r.node("mid").reasons[-1]
    assert _compiled_device(model, target) == CPU
