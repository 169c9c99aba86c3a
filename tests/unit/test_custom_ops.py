"""Custom operators: a registered numpy implementation takes a model with ops of the user's own
domain through check (CPU, reason "custom op"), quantize (float, Q/DQ at its boundary), compile
(a CPU subgraph) and the runtime, exactly as ONNX Runtime runs the quantized model; an unregistered
one is one coded error naming every custom op, and a failing implementation is a coded error, not
the end of the process (onnxruntime-extensions aborts on an exception in a Python op)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    saved = dict(custom_ops._REGISTRY), dict(custom_ops._LIBRARIES)
    custom_ops._REGISTRY.clear()
    custom_ops._LIBRARIES.clear()
    yield custom_ops._REGISTRY
    custom_ops._REGISTRY.clear()
    custom_ops._REGISTRY.update(saved[0])
    custom_ops._LIBRARIES.clear()
    custom_ops._LIBRARIES.update(saved[1])


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


def _conv_sandwich(path, middle: list, domain: str, seed: int, out: str) -> str:
    """conv1 -> ``middle`` (nodes from ``c1`` to ``out``) -> conv2, saved at ``path``."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), *middle,
             helper.make_node("Conv", [out, "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    onnx.save(model, path)
    return str(path)


def _custom_model(tmp_path) -> str:
    return _conv_sandwich(tmp_path / "custom.onnx", [
        helper.make_node("MySwish", ["c1"], ["s1"], domain="com.example", name="swish1", beta=1.5),
        helper.make_node("MySwish", ["s1"], ["s2"], domain="com.example", name="swish2", beta=1.5),
        helper.make_node("PillarScatter", ["s2"], ["p"], domain="com.example", name="scatter"),
    ], "com.example", 0, "p")


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
    npuflow.model_checks.validate(model)


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
    ({"domain": "com::x"}, "'::'"),
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


def _library_model(tmp_path) -> str:
    """conv -> NegPos (a C++ op of onnxruntime-extensions' library) -> pos - neg = |x| -> conv."""
    return _conv_sandwich(tmp_path / "library_op.onnx", [
        helper.make_node("NegPos", ["c1"], ["neg", "pos"], domain="ai.onnx.contrib", name="negpos"),
        helper.make_node("Sub", ["pos", "neg"], ["a"], name="abs"),
    ], "ai.onnx.contrib", 1, "a")


@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
def test_an_onnx_runtime_library_op_goes_through_every_stage(tmp_path, target):
    """A C++ custom op from a registered ONNX Runtime library (here onnxruntime-extensions' own
    NegPos): unregistered it is the coded error; registered, check puts it on the CPU naming the
    library, and the compiled model equals ONNX Runtime on the quantized model with the library."""
    import onnxruntime_extensions

    path = _library_model(tmp_path)
    with pytest.raises(NpuflowError) as err:
        npuflow.check(path, target)
    assert err.value.code == "NPF_MODEL_CUSTOM_OP" and "ai.onnx.contrib:NegPos" in err.value.message
    assert "register_op_library" in err.value.hint
    library = onnxruntime_extensions.get_library_path()
    npuflow.register_op_library(library, domain="ai.onnx.contrib", op_types=["NegPos"])
    report = npuflow.check(path, target)
    node = next(n for n in report.nodes if n.name == "negpos")
    assert node.device == "CPU" and any("from the ONNX Runtime library" in r and library in r for r in node.reasons)
    q = npuflow.quantize(path, _calib(), target)
    assert [n.domain for n in q.model.graph.node if n.op_type == "NegPos"] == ["ai.onnx.contrib"]
    npuf = tmp_path / "m.npuf"
    npuflow.compile(q.model, target).save(npuf)
    session = npuflow.Session(npuf)
    reference = open_session(q.model)
    for x in _calib()[:3]:
        np.testing.assert_array_equal(session.run({"x": x})["y"], reference.run(None, {"x": x})[0])


def test_a_bad_library_is_refused_when_registered(tmp_path):
    with pytest.raises(NpuflowError) as missing:
        npuflow.register_op_library(tmp_path / "nope.so", domain="com.example")
    assert missing.value.code == "NPF_CUSTOM_OP_BAD_REGISTRATION" and "nope.so" in missing.value.message
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a shared library")
    with pytest.raises(NpuflowError) as bad:
        npuflow.register_op_library(junk, domain="com.example")
    assert "ONNX Runtime cannot load" in bad.value.message
    with pytest.raises(NpuflowError):
        npuflow.register_op_library(junk, domain="ai.onnx")
    assert not custom_ops._LIBRARIES


def test_register_files_run_the_users_registrations(tmp_path):
    """Horizon's custom_op: {op_register_files, custom_op_dir}: Python files that register ops."""
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "swish_op.py").write_text(
        "import numpy as np, npuflow\n"
        "npuflow.register_op('MySwish', lambda x, beta=1.0: x / (1 + np.exp(-beta * x)), domain='com.example',"
        " attrs={'beta': float})\n"
        "npuflow.register_op('PillarScatter', lambda x: np.roll(x, 1, axis=-1), domain='com.example')\n")
    custom_ops.load_register_files(["swish_op.py"], ops)
    assert custom_ops.lookup("com.example", "MySwish") is not None
    npuflow.check(_custom_model(tmp_path), DPU)
    (ops / "broken.py").write_text("raise RuntimeError('no')\n")
    for files in (["missing.py"], ["broken.py"]):
        with pytest.raises(NpuflowError) as err:
            custom_ops.load_register_files(files, ops)
        assert err.value.code == "NPF_CUSTOM_OP_BAD_REGISTRATION" and files[0] in err.value.message


def test_build_yaml_custom_op_group_registers_before_the_model_loads(tmp_path):
    """hb_mapper's ``custom_op: {custom_op_method, op_register_files, custom_op_dir}`` in a build
    config: the files run first, so a model with custom ops builds; the .npuf runs them."""
    import yaml

    _custom_model(tmp_path)
    (tmp_path / "calib").mkdir()
    for i, x in enumerate(_calib()):
        x.astype(np.float32).tofile(tmp_path / "calib" / f"{i:03d}.bin")
    (tmp_path / "custom_op").mkdir()
    (tmp_path / "custom_op" / "my_ops.py").write_text(
        "import numpy as np, npuflow\n"
        "npuflow.register_op('MySwish', lambda x, beta=1.0: x / (1 + np.exp(-beta * x)), domain='com.example',"
        " attrs={'beta': float})\n"
        "npuflow.register_op('PillarScatter', lambda x: np.roll(x, 1, axis=-1), domain='com.example')\n")
    config = {
        "model_parameters": {"onnx_model": "custom.onnx", "march": DPU, "output_model_file_prefix": "custom",
                             "working_dir": "out"},
        "input_parameters": {"input_type_train": "featuremap", "input_type_rt": "featuremap",
                             "input_layout_train": "NCHW", "norm_type": "no_preprocess"},
        "calibration_parameters": {"cal_data_dir": "calib", "calibration_type": "max"},
        "compiler_parameters": {"optimize_level": "O3"},
        "custom_op": {"custom_op_method": "register", "op_register_files": "my_ops.py", "custom_op_dir": "./custom_op"},
    }
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    result = npuflow.build(tmp_path / "b.yaml")
    out = npuflow.Session(result.files["compiled"]).run({"x": _calib()[0]})["y"]
    assert out.shape == (1, 4, 8, 8) and np.abs(out).max() > 0
    custom_ops._REGISTRY.clear()
    config["custom_op"]["op_register_files"] = "missing.py"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(NpuflowError) as err:
        npuflow.build(tmp_path / "b.yaml")
    assert err.value.code == "NPF_CUSTOM_OP_BAD_REGISTRATION" and "missing.py" in err.value.message


_LIVE_SESSION = """
import numpy as np
from onnx import TensorProto, helper
import npuflow
from npuflow.ort_session import open_session

def session(op_type):
    npuflow.register_op(op_type, lambda x: x + 1, domain="com.example")
    graph = helper.make_graph([helper.make_node(op_type, ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return open_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                                helper.make_opsetid("com.example", 1)]))

first = session("First")
later = [session(f"Later{i}") for i in range(8)]  # Python ops declared while `first` lives
assert first.run(None, {"x": np.zeros(2, np.float32)})[0].tolist() == [1.0, 1.0]
del first, later
print("ok")
"""


def test_python_ops_declared_later_leave_live_sessions_intact():
    """The test suite's segfault: onnxruntime-extensions kept every Python op of one domain in one
    vector that live sessions point into, so declaring another op could free what a session calls
    on its next run or when it is destroyed.  glibc here fills freed memory at once (no per-thread
    cache, ``MALLOC_PERTURB_``), so a call through freed memory fails in this process, not later."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "MALLOC_PERTURB_": "65",
           "PYTHONPATH": os.pathsep.join([str(Path(npuflow.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _LIVE_SESSION], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-3000:])
