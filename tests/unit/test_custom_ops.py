"""Custom operators: a registered numpy implementation takes a model with ops of the user's own
domain through check (CPU, reason "custom op"), quantize (float, Q/DQ at its boundary), compile
(a CPU subgraph) and the runtime, exactly as ONNX Runtime runs the quantized model; an unregistered
one is one coded error naming every custom op, and a failing implementation is a coded error, not
the end of the process (onnxruntime-extensions aborts on an exception in a Python op)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import custom_ops
from npuflow.cli.app import main
from npuflow.errors import NpuflowError
from npuflow.ort_session import open_session

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(autouse=True)
def registry():
    """Each test starts with no custom op registered and leaves none behind."""
    saved = dict(custom_ops._REGISTRY)
    custom_ops._REGISTRY.clear()
    yield custom_ops._REGISTRY
    custom_ops._REGISTRY.clear()
    custom_ops._REGISTRY.update(saved)


def _register(fail: bool = False) -> None:
    @npuflow.register_op("MySwish", domain="com.example", attrs={"beta": float})
    def my_swish(x, beta=1.0):
        if fail and x.size:
            raise ZeroDivisionError("broken on purpose")
        return x / (1.0 + np.exp(-beta * x))

    @npuflow.register_op("PillarScatter", domain="com.example")
    def scatter(x):
        return np.roll(x, 1, axis=-1)  # stands in for a scatter: moves values, keeps the shape


def _calib():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(8)]


def _custom_model(tmp_path) -> str:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("MySwish", ["c1"], ["s1"], domain="com.example", name="swish1", beta=1.5),
        helper.make_node("MySwish", ["s1"], ["s2"], domain="com.example", name="swish2", beta=1.5),
        helper.make_node("PillarScatter", ["s2"], ["p"], domain="com.example", name="scatter"),
        helper.make_node("Conv", ["p", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    return str(path)


def test_every_custom_op_is_named_in_one_coded_error(tmp_path):
    path = _custom_model(tmp_path)
    for stage in (lambda: npuflow.check(path, "DPUCZDX8G_ISA1_B4096"),
                  lambda: npuflow.quantize(path, [np.zeros((1, 3, 8, 8), np.float32)], "cpu-int8")):
        with pytest.raises(NpuflowError) as err:
            stage()
        assert err.value.code == "NPF_MODEL_CUSTOM_OP"
        assert "com.example:MySwish (node swish1, swish2)" in err.value.message
        assert "com.example:PillarScatter (node scatter)" in err.value.message


def test_cli_prints_the_code_and_the_way_out(tmp_path, capsys):
    assert main(["check", _custom_model(tmp_path), "-t", "DPUCZDX8G_ISA1_B4096", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ERROR [NPF_MODEL_CUSTOM_OP]" in err and "npuflow.register_op" in err and "Traceback" not in err


def test_model_local_functions_are_not_custom_ops(tmp_path):
    """npuflow's own quantized models call model-local functions of the ai.npuflow domain."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    fn = helper.make_function("my.local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Twice", ["x"], ["y"], domain="my.local")], "g", [x], [y])
    model = helper.make_model(graph, functions=[fn],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.local", 1)])
    npuflow.model.validate(model)


@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
def test_a_registered_custom_op_goes_through_every_stage(tmp_path, target):
    _register()
    path = _custom_model(tmp_path)
    report = npuflow.check(path, target)
    cpu = {n.name: n.reasons for n in report.nodes if n.device == "CPU"}
    assert set(cpu) == {"swish1", "swish2", "scatter"}
    assert "custom op com.example:MySwish" in cpu["swish1"][0] and "my_swish" in cpu["swish1"][0]
    assert [n.device for n in report.nodes if n.op_type == "Conv"] == ["NPU", "NPU"]

    q = npuflow.quantize(path, _calib(), target)
    assert q.report.outputs["y"] > 0.99
    kinds = {n.op_type: n.domain for n in q.model.graph.node}
    assert kinds["MySwish"] == "com.example" and kinds["PillarScatter"] == "com.example"

    npuf = tmp_path / "custom.npuf"
    npuflow.compile(q.model, target).save(npuf)
    session = npuflow.Session(npuf)
    devices = [sg["device"] for sg in session.compiled.manifest["subgraphs"]]
    assert devices[0] != "CPU" and "CPU" in devices and devices[-1] != "CPU"
    reference = open_session(q.model, level="basic" if target == DPU else "all")
    for x in _calib()[:3]:
        np.testing.assert_array_equal(session.run({"x": x})["y"], reference.run(None, {"x": x})[0])


def test_a_compiled_model_needs_its_custom_ops_registered_when_it_runs(tmp_path, registry):
    _register()
    q = npuflow.quantize(_custom_model(tmp_path), _calib(), DPU)
    npuf = tmp_path / "custom.npuf"
    npuflow.compile(q.model, DPU).save(npuf)
    registry.clear()  # a new process that never registered them
    with pytest.raises(NpuflowError) as err:
        npuflow.Session(npuf)
    assert err.value.code == "NPF_MODEL_CUSTOM_OP" and "com.example:MySwish" in err.value.message


def test_a_failing_implementation_is_a_coded_error_not_an_abort(tmp_path):
    _register(fail=True)
    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(_custom_model(tmp_path), _calib(), DPU)
    assert err.value.code == "NPF_CUSTOM_OP_FAILED"
    assert "com.example:MySwish" in err.value.message and "ZeroDivisionError: broken on purpose" in err.value.message


@pytest.mark.parametrize("kwargs, reason", [
    ({"domain": ""}, "standard"),
    ({"domain": "ai.onnx"}, "standard"),
    ({"domain": "com.x", "inputs": ("complex",)}, "tensor type"),
    ({"domain": "com.x", "attrs": {"k": list}}, "attribute"),
])
def test_bad_registrations_are_coded_errors(kwargs, reason):
    with pytest.raises(NpuflowError) as err:
        npuflow.register_op("Op", lambda x: x, **kwargs)
    assert err.value.code == "NPF_CUSTOM_OP_BAD_REGISTRATION" and reason in err.value.message


def test_the_custom_op_example_runs_end_to_end(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "custom_op.py"
    spec = importlib.util.spec_from_file_location("custom_op_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--eval", "60"]) == 0
    out = capsys.readouterr().out
    assert "capped_relu on the CPU: custom op com.example:CappedRelu" in out
    assert "subgraph_0_npu (DPU), subgraph_1_cpu (CPU), subgraph_2_npu (DPU)" in out
    agree = float(out.split("agrees with float on ")[1].split("%")[0])
    assert agree >= 95.0
